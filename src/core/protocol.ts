// Names both sides of the wire agree on beyond the protobuf schema.

/** Advertised in GetGatewayInfoResponse.capabilities by gateways that keep SandboxSpec.files. */
export const CAPABILITY_SANDBOX_FILES = "sandbox-files.v1";

/**
 * Annotation asking the runtime to hold the main command until a client
 * attaches (or asks it to start), so uploads land first and no output is lost.
 */
export const ANNOTATION_START_ON_ATTACH = "openshell.dev/start-on-attach";

/** gRPC metadata key a supervisor authenticates with: `<sandbox id>:<secret>`. */
export const SUPERVISOR_METADATA_KEY = "x-openshell-supervisor";

/** SSH subsystems of the sandbox agent beyond OpenSSH's. */
export const SUBSYSTEM_MAIN = "openshell-main";
export const SUBSYSTEM_START = "openshell-start";
