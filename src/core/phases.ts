// Phase and condition rules shared by everything that changes a sandbox's
// status. The gateway owns one condition, `Ready`, and ERROR is sticky.

import { type Sandbox, type SandboxCondition, SandboxPhase, type SandboxStatus } from "../gen/openshell.js";

export function phaseOf(sandbox: Sandbox): SandboxPhase {
  return sandbox.status?.phase ?? SandboxPhase.SANDBOX_PHASE_UNSPECIFIED;
}

/** The status of a sandbox just accepted: Provisioning, no conditions. */
export function newSandboxStatus(name: string): SandboxStatus {
  return {
    sandboxName: name,
    agentPod: "",
    agentFd: "",
    sandboxFd: "",
    conditions: [],
    phase: SandboxPhase.SANDBOX_PHASE_PROVISIONING,
    currentPolicyVersion: 0,
    mainProcessInstanceId: "",
  };
}

export function setReadyCondition(
  sandbox: Sandbox,
  status: "True" | "False",
  reason: string,
  message: string,
): void {
  sandbox.status ??= newSandboxStatus(sandbox.metadata?.name ?? "");
  const condition: SandboxCondition = {
    type: "Ready",
    status,
    reason,
    message,
    lastTransitionTime: new Date().toISOString(),
  };
  const others = sandbox.status.conditions.filter((c) => c.type !== "Ready");
  sandbox.status.conditions = [...others, condition];
}

/** The condition a completed main command leaves: its exit status, while the sandbox stays usable. */
export const MAIN_COMMAND_CONDITION = "MainCommand";

export function setMainCommandCompleted(sandbox: Sandbox, exitCode: number): void {
  sandbox.status ??= newSandboxStatus(sandbox.metadata?.name ?? "");
  sandbox.status.exitCode = exitCode;
  const condition: SandboxCondition = {
    type: MAIN_COMMAND_CONDITION,
    status: "True",
    reason: "Completed",
    message: `exit status ${exitCode}`,
    lastTransitionTime: new Date().toISOString(),
  };
  const others = sandbox.status.conditions.filter((c) => c.type !== MAIN_COMMAND_CONDITION);
  sandbox.status.conditions = [...others, condition];
}

/** Forgets a completed main command: a new run of it begins. */
export function clearMainCommand(sandbox: Sandbox): void {
  if (!sandbox.status) return;
  delete sandbox.status.exitCode;
  sandbox.status.conditions = sandbox.status.conditions.filter((c) => c.type !== MAIN_COMMAND_CONDITION);
}

/** The exit status of the main command when it has completed, else undefined. */
export function mainExitStatus(sandbox: Sandbox): number | undefined {
  const completed = sandbox.status?.conditions.some(
    (c) => c.type === MAIN_COMMAND_CONDITION && c.reason === "Completed",
  );
  return completed ? sandbox.status?.exitCode : undefined;
}

export function setPhase(sandbox: Sandbox, phase: SandboxPhase): void {
  if (!sandbox.status) setReadyCondition(sandbox, "False", "Pending", "Sandbox is being created");
  sandbox.status!.phase = phase;
  if (sandbox.metadata) sandbox.metadata.resourceVersion += 1;
}

export const PHASE_NAMES: Record<number, string> = {
  [SandboxPhase.SANDBOX_PHASE_UNSPECIFIED]: "Unspecified",
  [SandboxPhase.SANDBOX_PHASE_PROVISIONING]: "Provisioning",
  [SandboxPhase.SANDBOX_PHASE_READY]: "Ready",
  [SandboxPhase.SANDBOX_PHASE_ERROR]: "Error",
  [SandboxPhase.SANDBOX_PHASE_DELETING]: "Deleting",
  [SandboxPhase.SANDBOX_PHASE_UNKNOWN]: "Unknown",
  [SandboxPhase.SANDBOX_PHASE_STOPPING]: "Stopping",
  [SandboxPhase.SANDBOX_PHASE_STOPPED]: "Stopped",
  [SandboxPhase.SANDBOX_PHASE_STARTING]: "Starting",
};

export function phaseName(phase: SandboxPhase | undefined): string {
  return PHASE_NAMES[phase ?? 0] ?? "Unknown";
}

/** The `reason: message` of a Ready=False condition, as the CLI prints it. */
export function readyFalseMessage(sandbox: Sandbox): string {
  const condition = sandbox.status?.conditions.find(
    (c) => c.type.toLowerCase() === "ready" && c.status.toLowerCase() === "false",
  );
  if (!condition) return "";
  if (condition.reason && condition.message) return `${condition.reason}: ${condition.message}`;
  return condition.message || condition.reason;
}

/**
 * Why a sandbox that is not Ready cannot run a command or move files: a
 * stopped one names the command that boots it again.
 */
export function notReadyMessage(name: string, phase: SandboxPhase | undefined): string {
  if (phase === SandboxPhase.SANDBOX_PHASE_STOPPED || phase === SandboxPhase.SANDBOX_PHASE_STOPPING) {
    return `sandbox '${name}' is stopped; start it with: openshell sandbox start ${name}`;
  }
  const again =
    phase === SandboxPhase.SANDBOX_PHASE_ERROR
      ? `; start it again with: openshell sandbox start ${name}`
      : "";
  return `sandbox '${name}' is not ready (phase: ${phaseName(phase)})${again}`;
}
