// `import { OpenShell } from "openshell"`: the public TypeScript API. Importing
// it has no side effects: nothing is patched, read, connected or spawned
// until a method is called.

export type { CreateFile, CreateOptions, CurrentUser, ListOptions, OpenShellOptions } from "./client.js";
export { OpenShell } from "./client.js";
export type { CommandOptions, CommandProcess, ExecOptions, ExecResult } from "./commands.js";
export type { ErrorCode } from "./errors.js";
export {
  AbortError,
  AlreadyExistsError,
  InvalidArgumentError,
  NotAuthorizedError,
  NotFoundError,
  OpenShellError,
  SandboxFailedError,
  TimeoutError,
  UnavailableError,
} from "./errors.js";
export type { ImageInfo } from "./images.js";
export type { ProgressEvent } from "./link.js";
export type {
  PolicyInfo,
  PolicyInput,
  PolicyRevisionStatus,
  SetPolicyOptions,
  SetPolicyResult,
} from "./policy.js";
export type {
  LogOptions,
  SandboxInfo,
  SandboxLogLine,
  TransferOptions,
  TransferProgress,
  TransferSummary,
  UploadOptions,
} from "./sandbox.js";
export { Sandbox } from "./sandbox.js";
