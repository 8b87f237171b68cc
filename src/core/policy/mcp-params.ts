// MCP rule params may be written as nested mappings in YAML (`params: {arguments: {path: "/x*"}}`),
// but the protobuf keeps one flat map with dotted keys (`arguments.path`) so the runtime can match
// params the same way it matches query parameters. These helpers convert between the two shapes.

import type { L7QueryMatcher } from "../../gen/sandbox.js";

/** A params tree as written in YAML: leaves are matchers, inner nodes are nested mappings. */
export type ParamTree = Map<string, ParamNode>;
export type ParamNode = { matcher: L7QueryMatcher } | { children: ParamTree };

/** Dotted keys for every leaf, in the key order upstream's sorted maps produce. */
export function flattenParams(tree: ParamTree): Array<[string, L7QueryMatcher]> {
  const out = new Map<string, L7QueryMatcher>();
  const walk = (prefix: string | undefined, node: ParamTree): void => {
    for (const key of [...node.keys()].sort(compareKeys)) {
      const child = node.get(key)!;
      const dotted = prefix === undefined ? key : `${prefix}.${key}`;
      if ("matcher" in child) out.set(dotted, child.matcher);
      else walk(dotted, child.children);
    }
  };
  walk(undefined, tree);
  return [...out.entries()];
}

/**
 * The nested YAML form of flat params, or undefined when the dotted keys collide (`a` and `a.b`)
 * and only the flat form can represent them without loss.
 */
export function nestParams(flat: Array<[string, L7QueryMatcher]>): ParamTree | undefined {
  const root: ParamTree = new Map();
  for (const [key, matcher] of flat) {
    const parts = key.split(".");
    let node = root;
    for (const [index, part] of parts.entries()) {
      const last = index === parts.length - 1;
      const existing = node.get(part);
      if (last) {
        if (existing !== undefined) return undefined;
        node.set(part, { matcher });
      } else if (existing === undefined) {
        const children: ParamTree = new Map();
        node.set(part, { children });
        node = children;
      } else if ("children" in existing) {
        node = existing.children;
      } else {
        return undefined;
      }
    }
  }
  return root;
}

function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
