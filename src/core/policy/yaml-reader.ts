// A strict reader over a parsed YAML document: every value is read through a typed accessor that
// knows its dotted location and source position, so a policy file with an unknown key or a value
// of the wrong type fails with `file:line:col: path: what is wrong`, as upstream's
// `deny_unknown_fields` serde schema refuses it (we add the position and the path).

import {
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  LineCounter,
  Parser,
  parseDocument,
  type YAMLMap,
} from "yaml";
import { invalidInput, type OpenShellError } from "../errors.js";
import { indexPath, keyPath } from "./location.js";

/**
 * The deepest a policy document may nest collections. Upstream's deepest
 * path (network_policies.<name>.endpoints[].rules[].allow.query.<key>.any[])
 * is under ten; the YAML composer recurses once per level, and a few
 * thousand levels overflow its stack ("Maximum call stack size exceeded").
 */
export const MAX_NESTING = 64;

/**
 * The offset of the first collection nested deeper than MAX_NESTING, if
 * any. The concrete syntax tree comes from yaml's streaming parser, which
 * keeps its own stack (no recursion); it is walked with an explicit stack too.
 */
function tooDeep(text: string): number | undefined {
  type Node = {
    type?: string;
    offset?: number;
    value?: unknown;
    items?: { key?: unknown; value?: unknown }[];
  };
  const pending: { node: Node; depth: number }[] = [];
  for (const token of new Parser().parse(text)) pending.push({ node: token as Node, depth: 0 });
  while (pending.length > 0) {
    const { node, depth } = pending.pop()!;
    if (node === null || typeof node !== "object") continue;
    const collection =
      node.type === "block-map" || node.type === "block-seq" || node.type === "flow-collection";
    const level = collection ? depth + 1 : depth;
    if (level > MAX_NESTING) return node.offset ?? 0;
    if (node.value !== undefined) pending.push({ node: node.value as Node, depth: level });
    for (const item of node.items ?? []) {
      if (item.key) pending.push({ node: item.key as Node, depth: level });
      if (item.value) pending.push({ node: item.value as Node, depth: level });
    }
  }
  return undefined;
}

/** YAML 1.2 core-schema integers: decimal, `0o` octal, `0x` hex. */
const INTEGER = /^[-+]?(?:[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$/;

export class YamlReader {
  private constructor(
    private readonly source: string,
    private readonly doc: Document,
    private readonly lines: LineCounter,
  ) {}

  /** Parses `text`; a YAML syntax error becomes `source:line:col: <parser's reason>`. */
  static parse(text: string, source: string): { reader: YamlReader; root: unknown } {
    const lines = new LineCounter();
    const deep = tooDeep(text);
    if (deep !== undefined) {
      const before = text.slice(0, deep);
      const line = before.split("\n").length;
      const col = deep - before.lastIndexOf("\n");
      throw invalidInput(
        `${source}:${line}:${col}: policy nesting exceeds ${MAX_NESTING} levels`,
        `a policy nests a few levels deep; flatten the document to at most ${MAX_NESTING}`,
      );
    }
    // YAML 1.2 core schema (no `yes`/`no` booleans, no `<<` merges) with unique keys, like serde_yml.
    const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
    const reader = new YamlReader(source, doc, lines);
    const syntax = doc.errors[0];
    if (syntax !== undefined) {
      const { line, col } = lines.linePos(syntax.pos[0]);
      throw invalidInput(
        `${source}:${line}:${col}: invalid YAML: ${firstLine(syntax.message)}`,
        "fix the YAML syntax at that line",
      );
    }
    return { reader, root: doc.contents };
  }

  /** An error at `node` (or at the start of the file when it has no position). */
  error(node: unknown, path: string, message: string): OpenShellError {
    const range = (node as { range?: [number, number, number] } | null)?.range;
    const { line, col } = this.lines.linePos(range?.[0] ?? 0);
    const where = path === "" ? "" : `${path}: `;
    return invalidInput(`${this.source}:${line}:${col}: ${where}${message}`);
  }

  /** The node itself, with aliases (`*anchor`) replaced by what they point to. */
  resolve(node: unknown): unknown {
    if (isAlias(node)) return node.resolve(this.doc);
    return node;
  }

  isMapping(node: unknown): boolean {
    return isMap(this.resolve(node));
  }

  isNull(node: unknown): boolean {
    const resolved = this.resolve(node);
    return resolved === null || resolved === undefined || (isScalar(resolved) && resolved.value === null);
  }

  /** A mapping's keys and values, checking each key against `allowed` (undefined: any key). */
  fields(node: unknown, path: string, allowed?: readonly string[]): Fields {
    const map = this.resolve(node);
    if (!isMap(map)) throw this.error(node, path, `expected a mapping, got ${describe(map)}`);
    return new Fields(this, map as YAMLMap<unknown, unknown>, path, allowed);
  }

  /**
   * A string value. YAML numbers are accepted as their source text, as serde reads them into a
   * String, so `run_as_user: 4321` means "4321".
   */
  string(node: unknown, path: string): string {
    const scalar = this.resolve(node);
    if (isScalar(scalar)) {
      if (typeof scalar.value === "string") return scalar.value;
      if (typeof scalar.value === "number" || typeof scalar.value === "bigint") {
        return scalar.source ?? String(scalar.value);
      }
    }
    throw this.error(node, path, `expected a string, got ${describe(scalar)}`);
  }

  bool(node: unknown, path: string): boolean {
    const scalar = this.resolve(node);
    if (isScalar(scalar) && typeof scalar.value === "boolean") return scalar.value;
    throw this.error(node, path, `expected true or false, got ${describe(scalar)}`);
  }

  integer(node: unknown, path: string, min: number, max: number): number {
    const scalar = this.resolve(node);
    const value = isScalar(scalar) ? scalar.value : undefined;
    // Written as an integer, as serde's integer types require: `1.0` and `1e3` are floats.
    const writtenAsInteger = !isScalar(scalar) || scalar.source === undefined || INTEGER.test(scalar.source);
    if (typeof value !== "number" || !Number.isInteger(value) || !writtenAsInteger) {
      throw this.error(node, path, `expected an integer from ${min} to ${max}, got ${describe(scalar)}`);
    }
    if (value < min || value > max) {
      throw this.error(node, path, `${value} is out of range (expected ${min} to ${max})`);
    }
    return value;
  }

  /** Items of a sequence; null means an empty list. */
  items(node: unknown, path: string): Array<{ node: unknown; path: string }> {
    if (this.isNull(node)) return [];
    const seq = this.resolve(node);
    if (!isSeq(seq)) throw this.error(node, path, `expected a list, got ${describe(seq)}`);
    return seq.items.map((item, index) => ({ node: item, path: indexPath(path, index) }));
  }

  strings(node: unknown, path: string): string[] {
    return this.items(node, path).map((item) => this.string(item.node, item.path));
  }

  /** Plain data for free-form values (middleware `config`), refusing what a protobuf Struct cannot hold. */
  json(node: unknown, path: string): unknown {
    const value = this.resolve(node);
    if (this.isNull(value)) return null;
    if (isScalar(value)) {
      const scalar = value.value;
      if (typeof scalar === "string" || typeof scalar === "boolean") return scalar;
      if (typeof scalar === "number" && Number.isFinite(scalar)) return scalar;
      throw this.error(node, path, `expected a JSON value, got ${describe(value)}`);
    }
    if (isSeq(value)) return this.items(value, path).map((item) => this.json(item.node, item.path));
    const fields = this.fields(value, path);
    const entries: Array<[string, unknown]> = fields.entries().map((entry) => {
      return [entry.key, this.json(entry.node, entry.path)];
    });
    return Object.fromEntries(entries);
  }
}

interface Entry {
  key: string;
  node: unknown;
  path: string;
}

/** The entries of one mapping, looked up by key; absent and null values both mean "not set". */
export class Fields {
  private readonly byKey = new Map<string, Entry>();
  private readonly ordered: Entry[] = [];

  constructor(
    readonly reader: YamlReader,
    readonly node: YAMLMap<unknown, unknown>,
    readonly path: string,
    allowed: readonly string[] | undefined,
  ) {
    for (const pair of node.items) {
      const keyNode = reader.resolve(pair.key);
      if (!isScalar(keyNode) || keyNode.value === null || typeof keyNode.value === "object") {
        throw reader.error(pair.key ?? node, path, `mapping keys must be strings, got ${describe(keyNode)}`);
      }
      const key =
        typeof keyNode.value === "string" ? keyNode.value : (keyNode.source ?? String(keyNode.value));
      const entryPath = keyPath(path, key);
      if (allowed !== undefined && !allowed.includes(key)) {
        throw reader.error(pair.key, entryPath, `unknown key (expected one of: ${allowed.join(", ")})`);
      }
      const entry = { key, node: pair.value, path: entryPath };
      this.byKey.set(key, entry);
      this.ordered.push(entry);
    }
  }

  entries(): Entry[] {
    return this.ordered;
  }

  keys(): string[] {
    return this.ordered.map((entry) => entry.key);
  }

  /** Whether `key` is present with a non-null value. */
  has(key: string): boolean {
    const entry = this.byKey.get(key);
    return entry !== undefined && !this.reader.isNull(entry.node);
  }

  /** The entry for `key` when present with a non-null value. */
  get(key: string): Entry | undefined {
    return this.has(key) ? this.byKey.get(key) : undefined;
  }

  required(key: string): Entry {
    const entry = this.get(key);
    if (entry === undefined) throw this.reader.error(this.node, this.path, `missing required key '${key}'`);
    return entry;
  }

  string(key: string): string {
    const entry = this.get(key);
    return entry === undefined ? "" : this.reader.string(entry.node, entry.path);
  }

  requiredString(key: string): string {
    const entry = this.required(key);
    return this.reader.string(entry.node, entry.path);
  }

  bool(key: string): boolean {
    return this.optionalBool(key) ?? false;
  }

  optionalBool(key: string): boolean | undefined {
    const entry = this.get(key);
    return entry === undefined ? undefined : this.reader.bool(entry.node, entry.path);
  }

  integer(key: string, min: number, max: number): number {
    const entry = this.get(key);
    return entry === undefined ? 0 : this.reader.integer(entry.node, entry.path, min, max);
  }

  strings(key: string): string[] {
    const entry = this.get(key);
    return entry === undefined ? [] : this.reader.strings(entry.node, entry.path);
  }

  list<T>(key: string, read: (node: unknown, path: string) => T): T[] {
    const entry = this.get(key);
    if (entry === undefined) return [];
    return this.reader.items(entry.node, entry.path).map((item) => read(item.node, item.path));
  }

  /** A nested mapping with its own allowed keys, or undefined when absent or null. */
  section(key: string, allowed?: readonly string[]): Fields | undefined {
    const entry = this.get(key);
    return entry === undefined ? undefined : this.reader.fields(entry.node, entry.path, allowed);
  }

  /** A mapping of user-chosen keys, each value read by `read`. */
  mapOf<T>(key: string, read: (node: unknown, path: string, key: string) => T): Array<[string, T]> {
    const section = this.section(key);
    if (section === undefined) return [];
    return section.entries().map((entry) => [entry.key, read(entry.node, entry.path, entry.key)]);
  }
}

function firstLine(message: string): string {
  return message.split("\n", 1)[0] ?? message;
}

function describe(node: unknown): string {
  if (node === null || node === undefined) return "nothing";
  if (isMap(node)) return "a mapping";
  if (isSeq(node)) return "a list";
  if (isScalar(node)) {
    const value = node.value;
    if (value === null) return "null";
    if (typeof value === "string") return `the string ${JSON.stringify(truncate(value))}`;
    if (typeof value === "boolean") return `the boolean ${value}`;
    if (typeof value === "number" || typeof value === "bigint") return `the number ${node.source ?? value}`;
  }
  return "an unsupported value";
}

function truncate(text: string): string {
  return text.length <= 40 ? text : `${text.slice(0, 37)}...`;
}
