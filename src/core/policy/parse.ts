// Policy YAML → protobuf `SandboxPolicy`, with upstream's schema (openshell-policy's serde types):
// the same keys at every level, the same defaults, the same normalisations (port/ports, policy name
// defaulting to its key, MCP `tool` and nested `params`, the JSON-RPC body limit). Structure and
// types are checked here; whether the content is safe is `validatePolicy`'s job.

import type {
  GraphqlOperation,
  L7Allow,
  L7DenyRule,
  L7QueryMatcher,
  McpOptions,
  NetworkEndpoint,
  NetworkMiddlewareConfig,
  NetworkPolicyRule,
  SandboxPolicy,
} from "../../gen/sandbox.js";
import { recordOf } from "./location.js";
import { flattenParams, type ParamNode, type ParamTree } from "./mcp-params.js";
import { type Fields, YamlReader } from "./yaml-reader.js";

const U16_MAX = 65_535;
const U32_MAX = 4_294_967_295;
const I32_MIN = -2_147_483_648;
const I32_MAX = 2_147_483_647;

const POLICY_KEYS = [
  "version",
  "filesystem_policy",
  "landlock",
  "process",
  "network_policies",
  "network_middlewares",
] as const;
const FILESYSTEM_KEYS = ["include_workdir", "read_only", "read_write"] as const;
const LANDLOCK_KEYS = ["compatibility"] as const;
const PROCESS_KEYS = ["run_as_user", "run_as_group"] as const;
const RULE_KEYS = ["name", "endpoints", "binaries"] as const;
const BINARY_KEYS = ["path", "harness"] as const;
const ENDPOINT_KEYS = [
  "host",
  "path",
  "port",
  "ports",
  "protocol",
  "tls",
  "enforcement",
  "access",
  "rules",
  "allowed_ips",
  "deny_rules",
  "allow_encoded_slash",
  "websocket_credential_rewrite",
  "request_body_credential_rewrite",
  "allow_uninspected_credentials",
  "persisted_queries",
  "graphql_persisted_queries",
  "graphql_max_body_bytes",
  "credential_signing",
  "signing_service",
  "signing_region",
  "credential_binding",
  "json_rpc",
  "mcp",
] as const;
const L7_RULE_KEYS = ["allow"] as const;
const L7_MATCH_KEYS = [
  "method",
  "path",
  "command",
  "query",
  "operation_type",
  "operation_name",
  "fields",
  "tool",
  "params",
] as const;
const GRAPHQL_OPERATION_KEYS = ["operation_type", "operation_name", "fields"] as const;
const CREDENTIAL_BINDING_KEYS = ["provider"] as const;
const JSON_RPC_KEYS = ["max_body_bytes"] as const;
const MCP_KEYS = ["max_body_bytes", "strict_tool_names", "allow_all_known_mcp_methods"] as const;
const ANY_MATCHER_KEYS = ["any"] as const;
const MIDDLEWARE_KEYS = ["name", "middleware", "order", "config", "on_error", "endpoints"] as const;
const SELECTOR_KEYS = ["include", "exclude"] as const;

/**
 * Parses a policy file. `source` names it in errors (`policy.yaml:3:5: filesystem_policy.bogus: ...`).
 * Throws an `invalid_input` OpenShellError on YAML syntax errors, unknown keys, wrong types,
 * out-of-range numbers and a missing `version`.
 */
export function parsePolicyYaml(text: string, source: string): SandboxPolicy {
  const { reader, root } = YamlReader.parse(text, source);
  if (reader.isNull(root)) throw reader.error(root, "", "missing required key 'version'");
  if (!reader.isMapping(root)) {
    throw reader.error(
      root,
      "",
      "a policy must be a mapping of keys such as 'version' and 'filesystem_policy'",
    );
  }
  const top = reader.fields(root, "", POLICY_KEYS);
  const version = top.required("version");

  const filesystem = top.section("filesystem_policy", FILESYSTEM_KEYS);
  const landlock = top.section("landlock", LANDLOCK_KEYS);
  const process = top.section("process", PROCESS_KEYS);

  return {
    version: reader.integer(version.node, version.path, 0, U32_MAX),
    filesystem:
      filesystem === undefined
        ? undefined
        : {
            includeWorkdir: filesystem.bool("include_workdir"),
            readOnly: filesystem.strings("read_only"),
            readWrite: filesystem.strings("read_write"),
          },
    landlock: landlock === undefined ? undefined : { compatibility: landlock.string("compatibility") },
    process:
      process === undefined
        ? undefined
        : { runAsUser: process.string("run_as_user"), runAsGroup: process.string("run_as_group") },
    networkPolicies: recordOf(
      top.mapOf("network_policies", (node, path, key) => readRule(reader.fields(node, path, RULE_KEYS), key)),
    ),
    networkMiddlewares: recordOf(
      top.mapOf("network_middlewares", (node, path, key) =>
        readMiddleware(reader.fields(node, path, MIDDLEWARE_KEYS), key),
      ),
    ),
  };
}

function readRule(rule: Fields, key: string): NetworkPolicyRule {
  const { reader } = rule;
  return {
    name: rule.string("name") || key,
    endpoints: rule.list("endpoints", (node, path) => readEndpoint(reader.fields(node, path, ENDPOINT_KEYS))),
    binaries: rule.list("binaries", (node, path) => {
      const binary = reader.fields(node, path, BINARY_KEYS);
      // `harness` is deprecated upstream: still accepted (and type-checked), never carried.
      binary.optionalBool("harness");
      return { path: binary.requiredString("path"), harness: false };
    }),
  };
}

function readEndpoint(endpoint: Fields): NetworkEndpoint {
  const { reader } = endpoint;
  const protocol = endpoint.string("protocol");
  // A non-empty `ports` wins; otherwise a non-zero `port` becomes the one-element list. The
  // scalar `port` field always mirrors the first entry, as upstream's conversion leaves it.
  const ports = endpoint.list("ports", (node, path) => reader.integer(node, path, 0, U16_MAX));
  const port = endpoint.integer("port", 0, U16_MAX);
  const normalizedPorts = ports.length > 0 ? ports : port > 0 ? [port] : [];

  const jsonRpc = endpoint.section("json_rpc", JSON_RPC_KEYS);
  const mcp = endpoint.section("mcp", MCP_KEYS);
  const binding = endpoint.section("credential_binding", CREDENTIAL_BINDING_KEYS);

  return {
    host: endpoint.string("host"),
    path: endpoint.string("path"),
    port: normalizedPorts[0] ?? 0,
    ports: normalizedPorts,
    protocol,
    tls: endpoint.string("tls"),
    enforcement: endpoint.string("enforcement"),
    access: endpoint.string("access"),
    rules: endpoint.list("rules", (node, path) => {
      const rule = reader.fields(node, path, L7_RULE_KEYS);
      const allow = rule.required("allow");
      return { allow: readMatch(reader.fields(allow.node, allow.path, L7_MATCH_KEYS)) };
    }),
    allowedIps: endpoint.strings("allowed_ips"),
    denyRules: endpoint.list("deny_rules", (node, path) =>
      readMatch(reader.fields(node, path, L7_MATCH_KEYS)),
    ),
    allowEncodedSlash: endpoint.bool("allow_encoded_slash"),
    persistedQueries: endpoint.string("persisted_queries"),
    graphqlPersistedQueries: recordOf(
      endpoint.mapOf("graphql_persisted_queries", (node, path): GraphqlOperation => {
        const operation = reader.fields(node, path, GRAPHQL_OPERATION_KEYS);
        return {
          operationType: operation.string("operation_type"),
          operationName: operation.string("operation_name"),
          fields: operation.strings("fields"),
        };
      }),
    ),
    graphqlMaxBodyBytes: endpoint.integer("graphql_max_body_bytes", 0, U32_MAX),
    websocketCredentialRewrite: endpoint.bool("websocket_credential_rewrite"),
    requestBodyCredentialRewrite: endpoint.bool("request_body_credential_rewrite"),
    // Provenance set by the gateway or the policy advisor, never by a policy author.
    advisorProposed: false,
    credentialSigning: endpoint.string("credential_signing"),
    signingService: endpoint.string("signing_service"),
    signingRegion: endpoint.string("signing_region"),
    // The protobuf has one body limit for the JSON-RPC family; an `mcp` stanza, when present,
    // supplies it so MCP policies need no shadow `json_rpc` block.
    jsonRpcMaxBodyBytes:
      mcp !== undefined
        ? mcp.integer("max_body_bytes", 0, U32_MAX)
        : (jsonRpc?.integer("max_body_bytes", 0, U32_MAX) ?? 0),
    mcp: readMcpOptions(mcp),
    credentialBinding: binding === undefined ? undefined : { provider: binding.requiredString("provider") },
    allowUninspectedCredentials: endpoint.bool("allow_uninspected_credentials"),
    providerCredentialed: false,
  };
}

function readMcpOptions(mcp: Fields | undefined): McpOptions | undefined {
  if (mcp === undefined) return undefined;
  const strictToolNames = mcp.optionalBool("strict_tool_names");
  const allowAllKnownMcpMethods = mcp.optionalBool("allow_all_known_mcp_methods");
  if (strictToolNames === undefined && allowAllKnownMcpMethods === undefined) return undefined;
  return { strictToolNames, allowAllKnownMcpMethods };
}

/** An allow clause or a deny rule: both have the same fields. */
function readMatch(match: Fields): L7Allow & L7DenyRule {
  const { reader } = match;
  const params: ParamTree = new Map();
  const paramsSection = match.section("params");
  for (const entry of paramsSection?.entries() ?? []) {
    params.set(entry.key, readParamNode(reader, entry.node, entry.path));
  }
  // MCP's `tool` is shorthand for the `tools/call` params `name`; an explicit params name wins.
  const tool = match.get("tool");
  if (tool !== undefined && !params.has("name")) {
    params.set("name", { matcher: readMatcher(reader, tool.node, tool.path) });
  }
  return {
    method: match.string("method"),
    path: match.string("path"),
    command: match.string("command"),
    query: recordOf(match.mapOf("query", (node, path) => readMatcher(reader, node, path))),
    operationType: match.string("operation_type"),
    operationName: match.string("operation_name"),
    fields: match.strings("fields"),
    params: recordOf(flattenParams(params)),
  };
}

/** A glob string or `{any: [globs]}`. */
function readMatcher(reader: YamlReader, node: unknown, path: string): L7QueryMatcher {
  if (reader.isMapping(node)) {
    return { glob: "", any: reader.fields(node, path, ANY_MATCHER_KEYS).strings("any") };
  }
  if (reader.isNull(node))
    throw reader.error(node, path, "expected a glob string or a mapping {any: [globs]}");
  return { glob: reader.string(node, path), any: [] };
}

// A params value is a matcher (glob string, `{any: [...]}`) or a mapping of nested params; a
// mapping whose only key is `any` is a matcher, as upstream's untagged enum tries that shape first.
function readParamNode(reader: YamlReader, node: unknown, path: string): ParamNode {
  if (!reader.isMapping(node)) return { matcher: readMatcher(reader, node, path) };
  const fields = reader.fields(node, path);
  if (fields.keys().every((key) => key === "any")) return { matcher: readMatcher(reader, node, path) };
  const children: ParamTree = new Map();
  for (const entry of fields.entries())
    children.set(entry.key, readParamNode(reader, entry.node, entry.path));
  return { children };
}

function readMiddleware(middleware: Fields, key: string): NetworkMiddlewareConfig {
  const { reader } = middleware;
  const config = middleware.section("config");
  const selector = middleware.section("endpoints", SELECTOR_KEYS);
  return {
    name: middleware.string("name") || key,
    middleware: middleware.requiredString("middleware"),
    // Always present (possibly empty), as upstream always builds a Struct from the config map.
    config: config === undefined ? {} : (reader.json(config.node, config.path) as { [key: string]: unknown }),
    onError: middleware.string("on_error"),
    endpoints:
      selector === undefined
        ? undefined
        : { include: selector.strings("include"), exclude: selector.strings("exclude") },
    order: middleware.integer("order", I32_MIN, I32_MAX),
  };
}
