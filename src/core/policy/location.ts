// Dotted locations inside a policy document (`network_policies.pypi.endpoints[0].port`), shared by
// the parser's structural errors and the validator's violations so both point at the same place.

const PLAIN_KEY = /^[A-Za-z0-9_-]+$/;

/** The location of `key` inside the mapping at `parent`; odd keys are quoted so the path stays unambiguous. */
export function keyPath(parent: string, key: string): string {
  const part = PLAIN_KEY.test(key) ? key : JSON.stringify(key);
  if (parent === "") return part;
  return PLAIN_KEY.test(key) ? `${parent}.${part}` : `${parent}[${part}]`;
}

export function indexPath(parent: string, index: number): string {
  return `${parent}[${index}]`;
}

/** An object built from entries, safe for keys such as `__proto__` that plain assignment would misread. */
export function recordOf<T>(entries: Iterable<readonly [string, T]>): { [key: string]: T } {
  return Object.fromEntries(entries) as { [key: string]: T };
}

/** Own entries sorted by key, so output and violation order do not depend on insertion order. */
export function sortedEntries<T>(record: { [key: string]: T }): Array<[string, T]> {
  return Object.entries(record).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}
