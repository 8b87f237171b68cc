// Rules for the names, labels, environment and commands a sandbox spec carries.
//
// Each rule is written once and used twice: the CLI checks flags before any RPC
// (the parse* functions throw `invalidInput`), and the gateway checks the same
// fields on receipt (the validate* functions return a message, which the gateway
// wraps in INVALID_ARGUMENT). Message texts follow upstream OpenShell's gateway
// and CLI where it has one, so scripts written against either see the same words.

import { randomInt } from "node:crypto";
import { invalidInput } from "./errors.js";

/** Sizes are UTF-8 bytes, as the gateway counts them. */
export function byteLength(text: string): number {
  return Buffer.byteLength(text, "utf8");
}

// ---------------------------------------------------------------------------
// Sandbox names
// ---------------------------------------------------------------------------

/**
 * Upstream joins sandbox, service and workspace names into one DNS label
 * (`sandbox--service--workspace`): 19 + 2 + 19 + 2 + 19 = 61 fits under 63,
 * and `--` stays an unambiguous separator only if names never contain it.
 */
export const SANDBOX_NAME_MAX_BYTES = 19;

export function validateSandboxName(name: string): string | undefined {
  const length = byteLength(name);
  if (length > SANDBOX_NAME_MAX_BYTES) {
    return `name exceeds maximum length (${length} > ${SANDBOX_NAME_MAX_BYTES})`;
  }
  if (!/^[a-z0-9-]*$/.test(name)) {
    return "name must contain only lowercase alphanumeric characters or hyphens";
  }
  if (name.startsWith("-") || name.endsWith("-")) {
    return "name must not start or end with a hyphen";
  }
  if (name.includes("--")) {
    return "name must not contain consecutive hyphens";
  }
  return undefined;
}

/**
 * A workspace name follows the sandbox name's rule: upstream joins both into
 * one DNS label, and here it also keys the store and reaches logs and paths,
 * so `../../etc` or a NUL must never be one. The empty string means the
 * default workspace on the wire, and is accepted there.
 */
export function validateWorkspaceName(workspace: string): string | undefined {
  if (workspace === "") return undefined;
  const problem = validateSandboxName(workspace);
  return problem === undefined ? undefined : `workspace ${problem.replace(/^name /, "")}`;
}

const NAME_ADJECTIVES = (
  "amber bold brave brisk calm clever cosmic crisp curious dapper eager early fair fancy " +
  "fleet fond gentle glad golden grand happy hardy honest humble jolly keen kind lively " +
  "lucky mellow merry mighty modest neat nimble noble patient plucky polite proud quick " +
  "quiet rapid ready robust rosy rustic sharp shiny silent sleek smart snug solid steady " +
  "sturdy sunny swift tidy trusty vivid warm wise witty young zesty"
).split(" ");

const NAME_NOUNS = (
  "badger beaver bison crane cricket dingo dolphin eagle falcon ferret finch fox gecko " +
  "gibbon heron hornet ibis jackal jaguar koala lemur lynx magpie marmot marten mink moose " +
  "newt ocelot orca osprey otter owl panda pelican puffin quail rabbit raven robin salmon " +
  "seal shrew sparrow squid stoat swan tapir tern tiger toucan trout turtle vole walrus " +
  "weasel whale wombat wren yak zebra"
).split(" ");

function pick(words: readonly string[]): string {
  return words[randomInt(words.length)]!;
}

/**
 * The name a sandbox gets when none is given: two words, as upstream's
 * gateway generates, cut to the name limit so it always validates.
 */
export function generateSandboxName(): string {
  const joined = `${pick(NAME_ADJECTIVES)}-${pick(NAME_NOUNS)}`;
  return joined.slice(0, SANDBOX_NAME_MAX_BYTES).replace(/-+$/, "");
}

// ---------------------------------------------------------------------------
// Labels (Kubernetes rules: the same labels must be valid on a cluster)
// ---------------------------------------------------------------------------

const LABEL_KEY_MAX = 253;
const LABEL_SEGMENT_MAX = 63;
export const LABEL_SELECTOR_MAX_PAIRS = 64;

// ASCII only: upstream accepts any Unicode alphanumeric here, which Kubernetes
// then rejects; checking what Kubernetes checks keeps the error at create time.
const LABEL_SEGMENT_CHARS = /^[A-Za-z0-9._-]*$/;
const ALNUM = /^[A-Za-z0-9]$/;
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

function validateLabelKey(key: string): string | undefined {
  if (key === "") return "label key cannot be empty";
  const length = byteLength(key);
  if (length > LABEL_KEY_MAX) return `label key exceeds ${LABEL_KEY_MAX} characters: '${key}'`;
  const slash = key.indexOf("/");
  const prefix = slash === -1 ? undefined : key.slice(0, slash);
  const name = slash === -1 ? key : key.slice(slash + 1);
  if (name === "") return `label key name segment cannot be empty: '${key}'`;
  if (byteLength(name) > LABEL_SEGMENT_MAX) {
    return `label key name segment exceeds ${LABEL_SEGMENT_MAX} characters: '${key}'`;
  }
  if (!LABEL_SEGMENT_CHARS.test(name)) {
    return `label key name segment contains invalid characters (must be alphanumeric, '-', '_', or '.'): '${key}'`;
  }
  if (!ALNUM.test(name[0]!)) {
    return `label key name segment must start with alphanumeric character: '${key}'`;
  }
  if (!ALNUM.test(name[name.length - 1]!)) {
    return `label key name segment must end with alphanumeric character: '${key}'`;
  }
  if (prefix !== undefined) {
    if (prefix === "") return `label key prefix cannot be empty when '/' is present: '${key}'`;
    if (!prefix.split(".").every((part) => part.length <= LABEL_SEGMENT_MAX && DNS_LABEL.test(part))) {
      return `label key prefix must be a DNS subdomain (dot-separated lowercase alphanumeric labels, '-' inside): '${key}'`;
    }
  }
  return undefined;
}

function validateLabelValue(key: string, value: string): string | undefined {
  if (value === "") return undefined;
  if (byteLength(value) > LABEL_SEGMENT_MAX) {
    return `label value for '${key}' exceeds ${LABEL_SEGMENT_MAX} characters: '${value}'`;
  }
  if (!LABEL_SEGMENT_CHARS.test(value)) {
    return `label value for '${key}' contains invalid characters (must be alphanumeric, '-', '_', or '.'): '${value}'`;
  }
  if (!ALNUM.test(value[0]!) || !ALNUM.test(value[value.length - 1]!)) {
    return `label value for '${key}' must start and end with an alphanumeric character: '${value}'`;
  }
  return undefined;
}

/** One label; the message names the key. */
export function validateLabel(key: string, value: string): string | undefined {
  return validateLabelKey(key) ?? validateLabelValue(key, value);
}

/** Labels are unbounded in number upstream; each must be a valid Kubernetes label. */
export function validateLabels(labels: Record<string, string>): string | undefined {
  for (const [key, value] of Object.entries(labels)) {
    const problem = validateLabel(key, value);
    if (problem !== undefined) return problem;
  }
  return undefined;
}

/** `--label KEY=VALUE`: split at the first `=`, then the Kubernetes rules. */
export function parseLabelFlag(spec: string): [string, string] {
  const eq = spec.indexOf("=");
  if (eq === -1) throw invalidInput(`invalid label format '${spec}', expected key=value`);
  const key = spec.slice(0, eq);
  const value = spec.slice(eq + 1);
  const problem = validateLabel(key, value);
  if (problem !== undefined) throw invalidInput(`--label ${spec}: ${problem}`);
  return [key, value];
}

function selectorProblem(selector: string): { labels: Record<string, string> } | { problem: string } {
  const labels: Record<string, string> = {};
  let pairs = 0;
  // Blank pairs are skipped so that a trailing comma, as upstream allows, is harmless.
  for (const rawPair of selector.split(",")) {
    const pair = rawPair.trim();
    if (pair === "") continue;
    pairs += 1;
    if (pairs > LABEL_SELECTOR_MAX_PAIRS) {
      return { problem: `label selector exceeds ${LABEL_SELECTOR_MAX_PAIRS} pair limit` };
    }
    const eq = pair.indexOf("=");
    if (eq === -1) return { problem: `invalid label selector: expected 'key=value', got '${pair}'` };
    const key = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    if (key === "") return { problem: `invalid label selector: key cannot be empty in '${pair}'` };
    const problem = validateLabel(key, value);
    if (problem !== undefined) return { problem: `invalid label selector '${pair}': ${problem}` };
    labels[key] = value;
  }
  return { labels };
}

/** `k=v,k2=v2` into the labels a sandbox must all carry; throws `invalidInput`. */
export function parseSelector(selector: string): Record<string, string> {
  const result = selectorProblem(selector);
  if ("problem" in result) throw invalidInput(result.problem);
  return result.labels;
}

/** The gateway's side of `parseSelector`. */
export function validateSelector(selector: string): string | undefined {
  const result = selectorProblem(selector);
  return "problem" in result ? result.problem : undefined;
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/**
 * Gateway limits on `spec.environment`. The total matters because drivers pack
 * the whole map into a single variable (`OPENSHELL_USER_ENVIRONMENT`).
 */
export const ENVIRONMENT_LIMITS = {
  entries: 128,
  keyBytes: 256,
  valueBytes: 8192,
  totalBytes: 256 * 1024,
} as const;

const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const RESERVED_ENV_PREFIX = "OPENSHELL_";

/** NUL cannot cross exec(2); CR and LF would break the line-based forms values are packed into. */
function controlCharProblem(value: string, subject: string, allowNewlines = false): string | undefined {
  if (value.includes("\0")) return `${subject} contains null bytes`;
  if (!allowNewlines && /[\r\n]/.test(value)) {
    return `${subject} contains newline or carriage return characters`;
  }
  return undefined;
}

function envKeyProblem(key: string, field: string, allowedReserved: readonly string[]): string | undefined {
  if (!ENV_KEY.test(key)) return `${field} keys must match ^[A-Za-z_][A-Za-z0-9_]*$; got '${key}'`;
  if (key.startsWith(RESERVED_ENV_PREFIX) && !allowedReserved.includes(key)) {
    return `${field} keys starting with OPENSHELL_ are reserved; got '${key}'`;
  }
  return undefined;
}

/**
 * `--env KEY=VALUE`: split at the first `=` (the value keeps any further `=`),
 * key trimmed. The value's characters are checked here too, since both create
 * and exec refuse a newline in it; its length depends on the command and is
 * checked with the rest of the request.
 */
export function parseEnvFlag(spec: string): [string, string] {
  const eq = spec.indexOf("=");
  if (eq === -1) throw invalidInput(`--env expects KEY=VALUE, got '${spec}'`);
  const key = spec.slice(0, eq).trim();
  const value = spec.slice(eq + 1);
  if (key === "") throw invalidInput("--env key cannot be empty");
  if (!ENV_KEY.test(key)) throw invalidInput(`--env key must match [A-Za-z_][A-Za-z0-9_]*; got '${key}'`);
  if (key.startsWith(RESERVED_ENV_PREFIX)) {
    throw invalidInput(`--env keys starting with OPENSHELL_ are reserved; got '${key}'`);
  }
  const problem = controlCharProblem(value, `--env value for '${key}'`);
  if (problem !== undefined) throw invalidInput(problem);
  return [key, value];
}

/**
 * A sandbox's environment (`spec.environment`, `spec.template.environment`).
 * `field` starts each message: the gateway passes the wire field's name, the
 * CLI `--env`.
 */
export function validateEnvironment(env: Record<string, string>, field = "environment"): string | undefined {
  const entries = Object.entries(env);
  if (entries.length > ENVIRONMENT_LIMITS.entries) {
    return `${field} exceeds maximum entries (${entries.length} > ${ENVIRONMENT_LIMITS.entries})`;
  }
  let total = 0;
  for (const [key, value] of entries) {
    const keyBytes = byteLength(key);
    const valueBytes = byteLength(value);
    total += keyBytes + valueBytes;
    if (keyBytes > ENVIRONMENT_LIMITS.keyBytes) {
      return `${field} key exceeds maximum length (${keyBytes} > ${ENVIRONMENT_LIMITS.keyBytes})`;
    }
    if (valueBytes > ENVIRONMENT_LIMITS.valueBytes) {
      return `${field} value for '${key}' exceeds maximum length (${valueBytes} > ${ENVIRONMENT_LIMITS.valueBytes})`;
    }
  }
  if (total > ENVIRONMENT_LIMITS.totalBytes) {
    return `${field} total size exceeds ${ENVIRONMENT_LIMITS.totalBytes} byte limit (${total} bytes)`;
  }
  for (const [key, value] of entries) {
    const problem = envKeyProblem(key, field, []) ?? controlCharProblem(value, `${field} value for '${key}'`);
    if (problem !== undefined) return problem;
  }
  return undefined;
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

export const COMMAND_LIMITS = {
  args: 256,
  argBytes: 32 * 1024,
  totalBytes: 256 * 1024,
} as const;

export const EXEC_LIMITS = {
  args: 1024,
  argBytes: 32 * 1024,
  envValueBytes: 32 * 1024,
  workdirBytes: 4096,
} as const;

/** The Python SDK ships a serialized callable through this one reserved key. */
const EXEC_ALLOWED_RESERVED_KEYS = ["OPENSHELL_PYFUNC_B64"] as const;

/**
 * The sandbox's main command. An empty argv is valid: it stands for the
 * default login shell, which the gateway substitutes before validating.
 * Newlines are allowed (inline scripts); NUL cannot cross exec(2).
 */
export function validateCommand(argv: readonly string[], field = "spec.command"): string | undefined {
  if (argv.length === 0) return undefined;
  if (argv.length > COMMAND_LIMITS.args) return `${field} exceeds ${COMMAND_LIMITS.args} argument limit`;
  if (argv[0] === "") return `${field}[0] must not be empty`;
  const total = argv.reduce((sum, arg) => sum + byteLength(arg), 0);
  if (total > COMMAND_LIMITS.totalBytes) {
    return `${field} total size exceeds ${COMMAND_LIMITS.totalBytes} byte limit`;
  }
  for (const [index, arg] of argv.entries()) {
    if (byteLength(arg) > COMMAND_LIMITS.argBytes) {
      return `${field}[${index}] exceeds ${COMMAND_LIMITS.argBytes} byte limit`;
    }
    const problem = controlCharProblem(arg, `${field}[${index}]`, true);
    if (problem !== undefined) return problem;
  }
  return undefined;
}

export interface ExecRequestFields {
  command: readonly string[];
  workdir?: string | undefined;
  environment?: Record<string, string> | undefined;
}

/**
 * `sandbox exec` / ExecSandbox. The environment has no entry cap here (upstream
 * has none), but each value travels inside the built `bash -lc` string.
 */
export function validateExecRequest(request: ExecRequestFields): string | undefined {
  const { command, workdir = "", environment = {} } = request;
  if (command.length === 0) return "command is required";
  if (command.length > EXEC_LIMITS.args) return `command array exceeds ${EXEC_LIMITS.args} argument limit`;
  for (const [index, arg] of command.entries()) {
    if (byteLength(arg) > EXEC_LIMITS.argBytes) {
      return `command argument ${index} exceeds ${EXEC_LIMITS.argBytes} byte limit`;
    }
    const problem = controlCharProblem(arg, `command argument ${index}`, true);
    if (problem !== undefined) return problem;
  }
  for (const [key, value] of Object.entries(environment)) {
    const keyProblem = envKeyProblem(key, "environment", EXEC_ALLOWED_RESERVED_KEYS);
    if (keyProblem !== undefined) return keyProblem;
    if (byteLength(value) > EXEC_LIMITS.envValueBytes) {
      return `environment value for '${key}' exceeds ${EXEC_LIMITS.envValueBytes} byte limit`;
    }
    const valueProblem = controlCharProblem(value, `environment value for '${key}'`);
    if (valueProblem !== undefined) return valueProblem;
  }
  if (workdir !== "") {
    if (byteLength(workdir) > EXEC_LIMITS.workdirBytes) {
      return `workdir exceeds ${EXEC_LIMITS.workdirBytes} byte limit`;
    }
    const problem = controlCharProblem(workdir, "workdir");
    if (problem !== undefined) return problem;
  }
  return undefined;
}

/** Upstream's community registry prefix, under which a community sandbox name (`base`) is an image. */
export const DEFAULT_COMMUNITY_REGISTRY = "ghcr.io/nvidia/openshell-community/sandboxes";

/** A community sandbox name: a plain word, no registry, path, tag or dot. */
const COMMUNITY_NAME = /^[a-z0-9][a-z0-9_-]{0,127}$/;

/**
 * The image reference `--from SOURCE` names: a community sandbox name under
 * `registry` (OPENSHELL_COMMUNITY_REGISTRY, its trailing slashes dropped),
 * tagged `latest`, as upstream resolves it: `base` →
 * `ghcr.io/nvidia/openshell-community/sandboxes/base:latest`; anything else
 * (`team/img`, `img:1`, `registry.example.com/img`, a path) as it is.
 */
export function imageReference(source: string, registry = DEFAULT_COMMUNITY_REGISTRY): string {
  if (!COMMUNITY_NAME.test(source)) return source;
  return `${registry.replace(/\/+$/, "") || DEFAULT_COMMUNITY_REGISTRY}/${source}:latest`;
}
