// Names both sides of the wire agree on beyond the protobuf schema.

/** Advertised in GetGatewayInfoResponse.capabilities by gateways that keep SandboxSpec.files. */
export const CAPABILITY_SANDBOX_FILES = "sandbox-files.v1";

/**
 * Annotation asking the runtime to hold the main command until a client
 * attaches (or asks it to start), so uploads land first and no output is lost.
 */
export const ANNOTATION_START_ON_ATTACH = "openshell.dev/start-on-attach";

/**
 * Annotation with the terminal size (`COLSxROWS`) of the client that will
 * attach, so a command on a pty starts at that size, not 80x24.
 */
export const ANNOTATION_TTY_SIZE = "openshell.dev/tty-size";

/**
 * Set by the gateway on a sandbox made from an image (`--from`): the digest
 * of the image's manifest, the exact image it runs, whatever its tag names later.
 */
export const ANNOTATION_IMAGE_DIGEST = "openshell.dev/image-digest";

/**
 * Advertised by gateways that honour ANNOTATION_START_ON_ATTACH and whose
 * sandboxes serve SUBSYSTEM_START: the command waits for the uploads.
 */
export const CAPABILITY_START_ON_ATTACH = "start-on-attach.v1";

/** Parses a `COLSxROWS` size, within what a terminal can be. */
export function parseTtySize(value: string | undefined): { cols: number; rows: number } | undefined {
  const match = /^(\d{1,4})x(\d{1,4})$/.exec(value ?? "");
  if (!match) return undefined;
  const cols = Number(match[1]);
  const rows = Number(match[2]);
  return cols > 0 && rows > 0 ? { cols, rows } : undefined;
}

/** gRPC metadata key a supervisor authenticates with: `<sandbox id>:<secret>`. */
export const SUPERVISOR_METADATA_KEY = "x-openshell-supervisor";

/** SSH subsystems of the sandbox agent beyond OpenSSH's. */
export const SUBSYSTEM_MAIN = "openshell-main";
export const SUBSYSTEM_START = "openshell-start";

/**
 * Advertised by gateways that keep SandboxSpec.ttl_seconds and
 * SandboxStatus.expires_at_ms and serve RenewSandbox (sandbox lifetimes).
 */
export const CAPABILITY_SANDBOX_TTL = "sandbox-ttl.v1";

/**
 * Advertised by gateways that keep their own image store (`--from`): they
 * resolve a community sandbox name themselves, under their own
 * OPENSHELL_COMMUNITY_REGISTRY. Against others the CLI resolves it, as
 * upstream's CLI does.
 */
export const CAPABILITY_SANDBOX_IMAGES = "sandbox-images.v1";

/**
 * The variables through which a pod that brings its own transfer tools (one
 * on an image, see supervisor/pod.ts) names them to upload and download;
 * unset elsewhere (the host root, an OpenShell gateway's sandboxes).
 */
export const TRANSFER_TOOL_ENV = { tar: "OPENSHELL_TAR", realpath: "OPENSHELL_REALPATH" } as const;

/** A transfer tool as a sandbox shell command names it: the pod's own when it has one, else the sandbox's. */
export function remoteTool(tool: keyof typeof TRANSFER_TOOL_ENV): string {
  return `\${${TRANSFER_TOOL_ENV[tool]}:-${tool}}`;
}
