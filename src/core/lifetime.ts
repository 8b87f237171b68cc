// Sandbox lifetimes (`--ttl`, `sandbox renew`, the gateway's default and
// maximum): durations as people write them, checked the same way by the CLI
// and the gateway.

/** The longest lifetime anything accepts: a year, far below what a timer or an int64 of ms holds. */
export const TTL_MAX_SECONDS = 366 * 24 * 3600;

const UNITS: Record<string, number> = { d: 86_400, h: 3600, m: 60, s: 1 };

/**
 * Seconds in a duration such as `30m`, `1h`, `1h30m`, `90s`, `2d` or a bare
 * number of seconds; undefined when it is none of those, zero or longer than
 * TTL_MAX_SECONDS.
 */
export function parseTtl(text: string): number | undefined {
  const value = text.trim();
  let seconds = 0;
  if (/^\d{1,9}$/.test(value)) seconds = Number(value);
  else {
    const match = /^(?:(\d{1,6})d)?(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,9})s)?$/.exec(value);
    if (!match || value === "") return undefined;
    ["d", "h", "m", "s"].forEach((unit, index) => {
      seconds += Number(match[index + 1] ?? 0) * UNITS[unit]!;
    });
  }
  return seconds > 0 && seconds <= TTL_MAX_SECONDS ? seconds : undefined;
}

/** The one-line error for a duration parseTtl refused, naming the input. */
export function ttlError(flag: string, text: string): string {
  return `${flag} ${text}: expected a duration such as 30m, 1h, 1h30m or 90s, at most 366d`;
}

/** A lifetime for people: `1h30m`, `20s`, `2d`. */
export function formatTtl(seconds: number): string {
  let rest = Math.max(0, Math.round(seconds));
  if (rest === 0) return "0s";
  let text = "";
  for (const [unit, size] of Object.entries(UNITS)) {
    const count = Math.floor(rest / size);
    if (count > 0) text += `${count}${unit}`;
    rest -= count * size;
  }
  return text;
}
