// How sandboxes look on stdout: the JSON/YAML document (upstream's shape plus
// our fields), the list table and the `get` table.

import { stringify as toYaml } from "yaml";
import { effectiveMode, formatBytes, formatMode } from "../../core/files.js";
import { describeLimits, limitsToResources, resourcesToLimits } from "../../core/limits.js";
import { mainExitStatus, phaseName, readyFalseMessage } from "../../core/phases.js";
import { policyToDocument, policyToYaml } from "../../core/policy.js";
import { ANNOTATION_IMAGE_DIGEST } from "../../core/protocol.js";
import { escapeForTerminal } from "../../core/terminal-text.js";
import { type Sandbox, SandboxPhase, type SandboxUsage } from "../../gen/openshell.js";
import { table, type Ui } from "./ui.js";

export type OutputFormat = "table" | "json" | "yaml";

/** A time in a machine-readable document: ISO 8601 UTC, or null when unset. */
export function isoTime(ms: number | undefined): string | null {
  return ms ? new Date(ms).toISOString() : null;
}

/** A time for people: ISO 8601 UTC to the second. */
export function formatTimestamp(ms: number): string {
  if (!ms) return "-";
  return `${new Date(ms).toISOString().slice(0, 19)}Z`;
}

export function sandboxDocument(sandbox: Sandbox, options: { full?: boolean } = {}): Record<string, unknown> {
  const meta = sandbox.metadata;
  const status = sandbox.status;
  const ready = readyFalseMessage(sandbox);
  const document: Record<string, unknown> = {
    id: meta?.id ?? "",
    name: meta?.name ?? "",
    workspace: meta?.workspace ?? "",
    labels: { ...(meta?.labels ?? {}) },
    annotations: { ...(meta?.annotations ?? {}) },
    resource_version: meta?.resourceVersion ?? 0,
    created_at: isoTime(meta?.createdAtMs),
    phase: phaseName(status?.phase),
    // Null when the sandbox has no lifetime (lives until deleted).
    expires_at: isoTime(status?.expiresAtMs),
    current_policy_version: status?.currentPolicyVersion ?? 0,
  };
  const image = imageOf(sandbox);
  if (image) {
    document.image = image.reference;
    document.image_digest = image.digest ?? null;
  }
  if (status?.exitCode !== undefined) document.exit_code = status.exitCode;
  // Set once the main command has ended (the sandbox stays usable); null while it runs.
  document.main_exit_status = mainExitStatus(sandbox) ?? null;
  if (ready) document.reason = ready;
  document.files = (sandbox.spec?.files ?? []).map((file) => ({
    path: file.path,
    mode: formatMode(effectiveMode(file.mode)),
    size: file.size,
    sha256: file.sha256,
  }));
  if (options.full) {
    document.command = [...(sandbox.spec?.command ?? [])];
    document.tty = sandbox.spec?.tty ?? false;
    document.conditions = (status?.conditions ?? []).map((c) => ({
      type: c.type,
      status: c.status,
      reason: c.reason,
      message: c.message,
      last_transition_time: c.lastTransitionTime,
    }));
    const limits = resourcesToLimits(sandbox.spec?.template?.resources);
    if (typeof limits === "object" && Object.keys(limits).length > 0) {
      document.limits = limitsToResources(limits).limits;
    }
    if (status?.usage) document.usage = usageDocument(status.usage);
    document.policy_source = "sandbox";
    document.revision = null;
    document.policy = sandbox.spec?.policy ? policyToDocument(sandbox.spec.policy) : null;
  }
  return document;
}

function usageDocument(usage: SandboxUsage): Record<string, number> {
  const out: Record<string, number> = {};
  if (usage.cpuSeconds !== undefined) out.cpu_seconds = Math.round(usage.cpuSeconds * 1000) / 1000;
  if (usage.memoryBytes !== undefined) out.memory_bytes = usage.memoryBytes;
  if (usage.pids !== undefined) out.pids = usage.pids;
  if (usage.diskBytes !== undefined) out.disk_bytes = usage.diskBytes;
  if (usage.oomKills !== undefined) out.oom_kills = usage.oomKills;
  return out;
}

/** `cpu 1.20 s, memory 12.3 MiB, pids 4, disk 2.0 MiB`. */
function describeUsage(usage: SandboxUsage): string {
  const parts: string[] = [];
  if (usage.cpuSeconds !== undefined) parts.push(`cpu ${usage.cpuSeconds.toFixed(2)} s`);
  if (usage.memoryBytes !== undefined) parts.push(`memory ${formatBytes(usage.memoryBytes)}`);
  if (usage.pids !== undefined) parts.push(`pids ${usage.pids}`);
  if (usage.diskBytes !== undefined) parts.push(`disk ${formatBytes(usage.diskBytes)}`);
  if (usage.oomKills) parts.push(`${usage.oomKills} killed out of memory`);
  return parts.join(", ");
}

export function printDocument(ui: Ui, format: "json" | "yaml", value: unknown): void {
  if (format === "json") ui.io.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else ui.io.stdout.write(toYaml(value));
}

function phaseColor(ui: Ui, phase: SandboxPhase | undefined, text: string): string {
  switch (phase) {
    case SandboxPhase.SANDBOX_PHASE_READY:
      return ui.out.green(text);
    case SandboxPhase.SANDBOX_PHASE_ERROR:
      return ui.out.red(text);
    case SandboxPhase.SANDBOX_PHASE_PROVISIONING:
      return ui.out.yellow(text);
    case SandboxPhase.SANDBOX_PHASE_DELETING:
      return ui.out.dim(text);
    default:
      return text;
  }
}

export function printSandboxList(ui: Ui, sandboxes: Sandbox[]): void {
  if (sandboxes.length === 0) {
    ui.note("No sandboxes found.");
    return;
  }
  // EXPIRES only when some sandbox has a lifetime.
  const expiring = sandboxes.some((s) => (s.status?.expiresAtMs ?? 0) > 0);
  const rows = sandboxes.map((s) => [
    s.metadata?.name ?? "",
    formatTimestamp(s.metadata?.createdAtMs ?? 0),
    ...(expiring ? [formatTimestamp(s.status?.expiresAtMs ?? 0)] : []),
    phaseName(s.status?.phase),
  ]);
  const headers = ["NAME", "CREATED", ...(expiring ? ["EXPIRES"] : []), "PHASE"];
  const lines = table(headers, rows, (h) => ui.out.bold(h));
  ui.data(lines[0]!);
  lines.slice(1).forEach((line, i) => {
    const sandbox = sandboxes[i]!;
    const phase = phaseName(sandbox.status?.phase);
    ui.data(
      line.endsWith(phase)
        ? line.slice(0, -phase.length) + phaseColor(ui, sandbox.status?.phase, phase)
        : line,
    );
  });
}

/** The image a sandbox runs (`template.image`) and the manifest digest it resolved to, when the gateway says. */
function imageOf(sandbox: Sandbox): { reference: string; digest: string | undefined } | undefined {
  const reference = sandbox.spec?.template?.image;
  if (!reference) return undefined;
  return { reference, digest: sandbox.metadata?.annotations[ANNOTATION_IMAGE_DIGEST] };
}

export function printSandboxDetails(ui: Ui, sandbox: Sandbox): void {
  const meta = sandbox.metadata!;
  const status = sandbox.status;
  const label = (text: string): string => ui.out.dim(text);
  ui.data(ui.out.cyan.bold("Sandbox:"));
  ui.data(`  ${label("Id:")} ${meta.id}`);
  ui.data(`  ${label("Name:")} ${meta.name}`);
  ui.data(`  ${label("Workspace:")} ${meta.workspace}`);
  ui.data(`  ${label("Created:")} ${formatTimestamp(meta.createdAtMs)}`);
  if (status?.expiresAtMs) ui.data(`  ${label("Expires:")} ${formatTimestamp(status.expiresAtMs)}`);
  ui.data(`  ${label("Phase:")} ${phaseColor(ui, status?.phase, phaseName(status?.phase))}`);
  const reason = readyFalseMessage(sandbox);
  // The reason may quote the sandbox (a supervisor's failure, a command's output).
  if (reason) ui.data(`  ${label("Reason:")} ${escapeForTerminal(reason)}`);
  const completed = mainExitStatus(sandbox);
  if (completed !== undefined) ui.data(`  ${label("Main command:")} completed, exit status ${completed}`);
  else if (status?.exitCode !== undefined) ui.data(`  ${label("Exit code:")} ${status.exitCode}`);
  ui.data(`  ${label("Resource version:")} ${meta.resourceVersion}`);
  const image = imageOf(sandbox);
  if (image) {
    // The creator's text (and, from another gateway, any annotation): escaped, as any other.
    const digest = image.digest ? ` (${image.digest})` : "";
    ui.data(`  ${label("Image:")} ${escapeForTerminal(image.reference + digest)}`);
  }
  if (status?.currentPolicyVersion) {
    ui.data(`  ${label("Policy revision:")} ${status.currentPolicyVersion} in force`);
  }
  ui.data(`  ${label("Command:")} ${(sandbox.spec?.command ?? []).join(" ")}`);
  const limits = resourcesToLimits(sandbox.spec?.template?.resources);
  if (typeof limits === "object") ui.data(`  ${label("Limits:")} ${describeLimits(limits)}`);
  if (status?.usage) ui.data(`  ${label("Usage:")} ${describeUsage(status.usage)}`);
  for (const [title, map] of [
    ["Labels:", meta.labels],
    ["Annotations:", meta.annotations],
  ] as const) {
    const keys = Object.keys(map).sort();
    if (keys.length === 0) continue;
    ui.data(ui.out.cyan.bold(title));
    for (const key of keys) ui.data(`    ${key}: ${map[key]}`);
  }
  const files = sandbox.spec?.files ?? [];
  if (files.length > 0) {
    ui.data(ui.out.cyan.bold("Files:"));
    const rows = files.map((f) => [
      f.path,
      formatMode(effectiveMode(f.mode)),
      formatBytes(Number(f.size)),
      f.sha256,
    ]);
    for (const line of table(["PATH", "MODE", "SIZE", "SHA256"], rows, (h) => ui.out.dim(h)))
      ui.data(`  ${line}`);
  }
  const policy = sandbox.spec?.policy;
  ui.data(`${ui.out.cyan.bold("Policy:")} ${policy ? "" : label("(default)")}`);
  if (policy) {
    for (const line of policyToYaml(policy).split("\n"))
      if (line.trim() !== "" && line !== "---") ui.data(`  ${line}`);
  }
}
