// DNS host patterns as network endpoints and middleware selectors use them: matching is
// case-insensitive and label by label; `*` (and `?`, `[...]`) stay within one label, and a label
// that is exactly `**` spans one or more labels. Upstream compiles every selector pattern with these
// rules and refuses what cannot compile, and checks whether a middleware selector can reach an
// endpoint that skips TLS inspection; both need the pattern semantics here.

type Label = { recursive: true } | { recursive: false; source: string; regex: RegExp; literal: boolean };

export class HostPattern {
  private constructor(
    readonly source: string,
    private readonly labels: Label[],
  ) {}

  /** The compiled pattern, or the reason it is invalid. */
  static compile(pattern: string): HostPattern | string {
    if (pattern === "") return "host pattern must not be empty";
    if (/\s/u.test(pattern)) return "host pattern must not contain whitespace";
    // A brace alternative would be taken literally and never match a real host: refuse it.
    if (/[{}]/.test(pattern)) {
      return "host pattern must not contain brace alternates; list each host pattern separately";
    }
    const source = pattern.toLowerCase();
    const parts = source.split(".");
    if (parts.some((part) => part === "")) return "host pattern must not contain empty DNS labels";
    const labels: Label[] = [];
    for (const part of parts) {
      if (part === "**") {
        labels.push({ recursive: true });
        continue;
      }
      const regex = labelGlobToRegex(part);
      if (typeof regex === "string") return `invalid host pattern: ${regex}`;
      labels.push({ recursive: false, source: part, regex, literal: !/[*?[]/.test(part) });
    }
    return new HostPattern(source, labels);
  }

  matches(host: string): boolean {
    const parts = host.toLowerCase().split(".");
    if (parts.some((part) => part === "")) return false;
    const seen = new Set<string>();
    const pending: Array<[number, number]> = [[0, 0]];
    while (pending.length > 0) {
      const [p, h] = pending.pop()!;
      const state = `${p},${h}`;
      if (seen.has(state)) continue;
      seen.add(state);
      if (p === this.labels.length && h === parts.length) return true;
      const label = this.labels[p];
      const part = parts[h];
      if (label === undefined || part === undefined) continue;
      if (label.recursive) {
        pending.push([p + 1, h + 1], [p, h + 1]);
      } else if (label.regex.test(part)) {
        pending.push([p + 1, h + 1]);
      }
    }
    return false;
  }

  /** The pattern itself when it has no wildcard, i.e. it names exactly one host. */
  literal(): string | undefined {
    return this.labels.every((label) => !label.recursive && label.literal) ? this.source : undefined;
  }

  isUniversal(): boolean {
    return this.labels.length === 1 && this.labels[0]!.recursive;
  }

  /** Conservatively, whether some concrete host could match both patterns. */
  overlaps(other: HostPattern): boolean {
    const seen = new Set<string>();
    const pending: Array<[number, number]> = [[0, 0]];
    while (pending.length > 0) {
      const [l, r] = pending.shift()!;
      const state = `${l},${r}`;
      if (seen.has(state)) continue;
      seen.add(state);
      if (l === this.labels.length && r === other.labels.length) return true;
      const left = this.labels[l];
      const right = other.labels[r];
      if (left === undefined || right === undefined) continue;
      // Each step consumes one shared host label, so `**` consumes at least one, as in matching.
      if (left.recursive && right.recursive) {
        pending.push([l + 1, r + 1], [l, r + 1], [l + 1, r]);
      } else if (left.recursive) {
        pending.push([l + 1, r + 1], [l, r + 1]);
      } else if (right.recursive) {
        pending.push([l + 1, r + 1], [l + 1, r]);
      } else if (labelsMayOverlap(left, right)) {
        pending.push([l + 1, r + 1]);
      }
    }
    return false;
  }
}

/** Include and exclude patterns of a middleware selector; excludes take precedence. */
export class HostSelector {
  private constructor(
    private readonly includes: HostPattern[],
    private readonly excludes: HostPattern[],
  ) {}

  static compile(include: readonly string[], exclude: readonly string[]): HostSelector | string {
    if (include.length === 0) return "endpoint selector must include at least one host pattern";
    const compiled: HostPattern[][] = [[], []];
    for (const [index, patterns] of [include, exclude].entries()) {
      for (const pattern of patterns) {
        const result = HostPattern.compile(pattern);
        if (typeof result === "string") return result;
        compiled[index]!.push(result);
      }
    }
    return new HostSelector(compiled[0]!, compiled[1]!);
  }

  /**
   * Whether the selector can match some host that `candidate` admits. Between two globs the
   * intersection is unknown, so an exclude suppresses the match only when it is universal or is
   * exactly one of the two patterns.
   */
  mayMatchPattern(candidate: HostPattern): boolean {
    return this.includes.some((include) => {
      if (!include.overlaps(candidate)) return false;
      const concrete = candidate.literal() ?? include.literal();
      const excluded =
        concrete === undefined
          ? this.excludes.some(
              (exclude) =>
                exclude.isUniversal() ||
                exclude.source === include.source ||
                exclude.source === candidate.source,
            )
          : this.excludes.some((exclude) => exclude.matches(concrete));
      return !excluded;
    });
  }
}

function labelsMayOverlap(
  left: Extract<Label, { recursive: false }>,
  right: Extract<Label, { recursive: false }>,
): boolean {
  if (left.literal && right.literal) return left.source === right.source;
  if (left.literal) return right.regex.test(left.source);
  if (right.literal) return left.regex.test(right.source);
  return true;
}

/** A shell-style glob for one DNS label (`*`, `?`, `[a-z]`, `[!x]`) as an anchored regex. */
function labelGlobToRegex(glob: string): RegExp | string {
  let out = "";
  for (let i = 0; i < glob.length; i++) {
    const ch = glob[i]!;
    if (ch === "*") {
      if (glob[i + 1] === "*") return "wildcards are either regular '*' or recursive '**'";
      out += "[^.]*";
    } else if (ch === "?") {
      out += "[^.]";
    } else if (ch === "[") {
      // As in shell globs, a `]` right after `[` or `[!` is a literal member of the class.
      let j = i + 1;
      const negated = glob[j] === "!";
      if (negated) j++;
      const start = j;
      if (glob[j] === "]") j++;
      while (j < glob.length && glob[j] !== "]") j++;
      if (j >= glob.length) return "invalid range pattern";
      const members = glob
        .slice(start, j)
        .replace(/[\\^\]]/g, (m) => `\\${m}`)
        .replace(/\[/g, "\\[");
      out += negated ? `[^${members}]` : `[${members}]`;
      i = j;
    } else {
      out += ch.replace(/[.*+?^${}()|[\]\\/]/g, (m) => `\\${m}`);
    }
  }
  try {
    return new RegExp(`^${out}$`, "u");
  } catch {
    // A reversed range such as `[z-a]`.
    return "invalid range pattern";
  }
}
