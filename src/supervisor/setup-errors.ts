// Failures while preparing a sandbox's filesystem. The supervisor turns one
// into a `Ready=False` condition: `reason` is the condition's reason and
// `message` its message, so the CLI prints `<reason>: <path>: <why>`.

import { OpenShellError } from "../core/errors.js";

export type SandboxSetupReason =
  /** An injected file could not be staged or mounted at its path. */
  | "FileInjectionFailed"
  /** The filesystem policy cannot be laid out (a symlinked private dir, a path under a file, ...). */
  | "FilesystemSetupFailed";

export class SandboxSetupError extends OpenShellError {
  readonly reason: SandboxSetupReason;

  constructor(reason: SandboxSetupReason, message: string, options: { cause?: unknown } = {}) {
    super("sandbox_error", message, options);
    // `String(error)` then reads `FileInjectionFailed: /etc/app/cfg.yaml: ...`.
    this.name = reason;
    this.reason = reason;
  }
}

/** A failure of `reason` at `path`, saying why. */
export function setupFailed(
  reason: SandboxSetupReason,
  path: string,
  why: string,
  cause?: unknown,
): SandboxSetupError {
  return new SandboxSetupError(reason, `${path}: ${why}`, cause === undefined ? {} : { cause });
}

export const fileInjectionFailed = (path: string, why: string, cause?: unknown): SandboxSetupError =>
  setupFailed("FileInjectionFailed", path, why, cause);

export const filesystemSetupFailed = (path: string, why: string, cause?: unknown): SandboxSetupError =>
  setupFailed("FilesystemSetupFailed", path, why, cause);

export function isSandboxSetupError(error: unknown): error is SandboxSetupError {
  return error instanceof SandboxSetupError;
}
