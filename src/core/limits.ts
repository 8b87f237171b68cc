// A sandbox's resource limits: the quantities `--cpu`, `--memory`, `--pids`
// and `--disk` take, and their place on the wire. Upstream sends
// `template.resources = {limits: {cpu: "500m", memory: "2Gi"}}`; we add
// `pids` and `ephemeral-storage` (Kubernetes' name for local disk) beside
// them. The gateway stores the effective limits (defaults applied) there, so
// `sandbox get` shows what binds the sandbox.

/** A protobuf Struct as ts-proto unwraps it. */
export type JsonObject = { [key: string]: unknown };

export interface Limits {
  /** Thousandths of a core. */
  cpuMillis?: number | undefined;
  memoryBytes?: number | undefined;
  pids?: number | undefined;
  diskBytes?: number | undefined;
}

const QUANTITY_UNITS: Record<string, number> = {
  "": 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
  K: 1e3,
};

/** Millicores from `500m`, `1` or `2.5`; a message naming the flag otherwise. */
export function parseCpu(text: string, flag = "--cpu"): number | string {
  const value = text.trim();
  if (value === "") return `${flag} must not be empty`;
  let millis: number;
  const milli = /^(\d{1,9})m$/.exec(value);
  if (milli) millis = Number(milli[1]);
  else if (/^(\d{1,6}(\.\d{0,3})?|\.\d{1,3})$/.test(value)) millis = Math.round(Number(value) * 1000);
  else
    return `invalid ${flag} value '${value}': expected positive cores or millicores, for example 2, 0.5, or 500m`;
  return millis > 0 ? millis : `${flag} must be greater than zero`;
}

/** Bytes from `512Mi`, `4Gi`, `8G` or a number of bytes; a message naming the flag otherwise. */
export function parseQuantity(text: string, flag = "--memory"): number | string {
  const value = text.trim();
  if (value === "") return `${flag} must not be empty`;
  const match = /^(\d{1,18})([KkMGTPE]i?|)$/.exec(value);
  const unit = match ? QUANTITY_UNITS[match[2]!] : undefined;
  const bytes = match && unit !== undefined ? Number(match[1]) * unit : Number.NaN;
  if (!Number.isSafeInteger(bytes)) {
    return `invalid ${flag} value '${value}': expected positive bytes or a quantity such as 512Mi, 4Gi, or 8G`;
  }
  return bytes > 0 ? bytes : `${flag} must be greater than zero`;
}

/** A process count from `--pids`. */
export function parsePids(text: string, flag = "--pids"): number | string {
  const value = text.trim();
  if (!/^\d{1,9}$/.test(value))
    return `invalid ${flag} value '${value}': expected a number of processes, for example 256`;
  const pids = Number(value);
  return pids > 0 ? pids : `${flag} must be greater than zero`;
}

function formatCpu(millis: number): string {
  return millis % 1000 === 0 ? String(millis / 1000) : `${millis}m`;
}

/** Bytes as the largest binary unit that divides them (`512Mi`), else bytes. */
export function formatQuantity(bytes: number): string {
  for (const unit of ["Ei", "Pi", "Ti", "Gi", "Mi", "Ki"]) {
    const size = QUANTITY_UNITS[unit]!;
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}

/** `{limits: {...}}` as `template.resources` carries it; only the limits that are set. */
export function limitsToResources(limits: Limits): JsonObject {
  const out: Record<string, string> = {};
  if (limits.cpuMillis !== undefined) out.cpu = formatCpu(limits.cpuMillis);
  if (limits.memoryBytes !== undefined) out.memory = formatQuantity(limits.memoryBytes);
  if (limits.pids !== undefined) out.pids = String(limits.pids);
  if (limits.diskBytes !== undefined) out["ephemeral-storage"] = formatQuantity(limits.diskBytes);
  return { limits: out };
}

/**
 * The limits in `template.resources` (an absent or empty struct: none), or a
 * message naming the offending field. `requests` are accepted and ignored,
 * as a single-host runtime has nothing to schedule.
 */
export function resourcesToLimits(resources: JsonObject | undefined): Limits | string {
  const limits: Limits = {};
  if (resources === undefined) return limits;
  for (const key of Object.keys(resources)) {
    if (key !== "limits" && key !== "requests")
      return `template.resources: unknown key '${key}' (expected limits)`;
  }
  const raw = resources.limits;
  if (raw === undefined || raw === null) return limits;
  if (typeof raw !== "object" || Array.isArray(raw)) return "template.resources.limits must be an object";
  for (const [key, value] of Object.entries(raw)) {
    const text = typeof value === "number" ? String(value) : value;
    if (typeof text !== "string") return `template.resources.limits.${key} must be a string`;
    const field = `template.resources.limits.${key}`;
    let parsed: number | string;
    switch (key) {
      case "cpu":
        parsed = parseCpu(text, field);
        if (typeof parsed === "number") limits.cpuMillis = parsed;
        break;
      case "memory":
        parsed = parseQuantity(text, field);
        if (typeof parsed === "number") limits.memoryBytes = parsed;
        break;
      case "pids":
        parsed = parsePids(text, field);
        if (typeof parsed === "number") limits.pids = parsed;
        break;
      case "ephemeral-storage":
        parsed = parseQuantity(text, field);
        if (typeof parsed === "number") limits.diskBytes = parsed;
        break;
      default:
        return `${field}: unknown limit (expected cpu, memory, pids or ephemeral-storage)`;
    }
    if (typeof parsed === "string") return parsed;
  }
  return limits;
}

const NAMES: Record<keyof Limits, string> = {
  cpuMillis: "cpu",
  memoryBytes: "memory",
  pids: "pids",
  diskBytes: "disk",
};

/** `requested` with `defaults` where it has none, or a message naming a limit above `maxima`. */
export function effectiveLimits(requested: Limits, defaults: Limits, maxima: Limits): Limits | string {
  const out: Limits = { ...defaults };
  for (const key of Object.keys(NAMES) as (keyof Limits)[]) {
    const value = requested[key];
    if (value !== undefined) out[key] = value;
    const max = maxima[key];
    if (max !== undefined && out[key] !== undefined && out[key]! > max) {
      const show = key === "cpuMillis" ? formatCpu : key === "pids" ? String : formatQuantity;
      return `${NAMES[key]} limit ${show(out[key]!)} exceeds this gateway's maximum ${show(max)}`;
    }
    if (out[key] === undefined) delete out[key];
  }
  return out;
}

/** One line for `sandbox get`: `cpu 500m, memory 256Mi, pids 512, disk 4Gi`. */
export function describeLimits(limits: Limits): string {
  const parts: string[] = [];
  if (limits.cpuMillis !== undefined) parts.push(`cpu ${formatCpu(limits.cpuMillis)}`);
  if (limits.memoryBytes !== undefined) parts.push(`memory ${formatQuantity(limits.memoryBytes)}`);
  if (limits.pids !== undefined) parts.push(`pids ${limits.pids}`);
  if (limits.diskBytes !== undefined) parts.push(`disk ${formatQuantity(limits.diskBytes)}`);
  return parts.length === 0 ? "none" : parts.join(", ");
}

/** The process limit a sandbox gets when neither it nor the gateway's operator names one. */
export const DEFAULT_PIDS = 1024;

/**
 * Limits from a gateway setting such as `cpu=2,memory=4Gi,pids=512,disk=10Gi`
 * (OPENSHELL_SANDBOX_LIMITS, OPENSHELL_SANDBOX_MAX_LIMITS); a message naming
 * the setting and the offending entry otherwise.
 */
export function parseLimitList(text: string, setting: string): Limits | string {
  const limits: Limits = {};
  for (const entry of text.split(/[\s,]+/).filter((part) => part !== "")) {
    const [key, value = ""] = entry.split("=", 2) as [string, string?];
    const field = `${setting} ${key}`;
    const parsed =
      key === "cpu"
        ? parseCpu(value, field)
        : key === "memory" || key === "disk"
          ? parseQuantity(value, field)
          : key === "pids"
            ? parsePids(value, field)
            : `${setting}: unknown limit '${key}' (expected cpu=, memory=, pids= or disk=, separated by commas)`;
    if (typeof parsed === "string") return parsed;
    const name = ({ cpu: "cpuMillis", memory: "memoryBytes", pids: "pids", disk: "diskBytes" } as const)[
      key as "cpu"
    ];
    limits[name] = parsed;
  }
  return limits;
}
