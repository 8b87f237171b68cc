// A point in time by which a step must be done, shared by every step of one
// operation. An exec with `--timeout 5` connects, opens a channel and runs
// its command; a sandbox that stalls any one of them must not stretch the
// whole beyond 5 s, so each step is raced against what is left of one
// deadline rather than given a timer of its own.

export class Deadline {
  private readonly at: number | undefined;

  /** `ms` of 0 (or less) means no deadline: every race is left to the step's own bound. */
  constructor(
    ms: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.at = ms > 0 ? now() + ms : undefined;
  }

  /** Milliseconds left (at least 0), or undefined without a deadline. */
  remaining(): number | undefined {
    return this.at === undefined ? undefined : Math.max(0, this.at - this.now());
  }

  expired(): boolean {
    return this.at !== undefined && this.now() >= this.at;
  }

  /**
   * Settles as `step` does, or rejects with `onExpiry()` once the deadline (or
   * `capMs`, the step's own bound, whichever comes first) has passed. The step
   * is not cancelled: whoever started it still owns its result.
   */
  race<T>(step: Promise<T>, onExpiry: (expired: "deadline" | "cap") => Error, capMs?: number): Promise<T> {
    const left = this.remaining();
    const cap = capMs !== undefined && (left === undefined || capMs < left);
    const wait = cap ? capMs : left;
    if (wait === undefined) return step;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(onExpiry(cap ? "cap" : "deadline")), wait);
      step.then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (error: unknown) => {
          clearTimeout(timer);
          reject(error);
        },
      );
    });
  }
}
