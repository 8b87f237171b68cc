// Protobuf `SandboxPolicy` → policy YAML with upstream's key names (`filesystem_policy`, not
// `filesystem`) and upstream's omissions (empty values left out), so that whatever came from a
// file parses back to the same policy.
//
// Where upstream's serializer loses information we keep it instead, because a policy shown by
// `sandbox get` must be the policy that is enforced:
// - an MCP rule's `method` is written as stored (upstream drops `*` and `tools/call` in some cases);
// - a present but empty `process` section is kept as `process: {}`;
// - ports above 65535 (only possible from a hand-built protobuf) are shown as they are, not
//   clamped to 65535; parsing the output then refuses them instead of silently changing them.

import { stringify } from "yaml";
import type {
  L7QueryMatcher,
  NetworkEndpoint,
  NetworkMiddlewareConfig,
  NetworkPolicyRule,
  SandboxPolicy,
} from "../../gen/sandbox.js";
import { recordOf, sortedEntries } from "./location.js";
import { nestParams, type ParamTree } from "./mcp-params.js";

type YamlValue = unknown;
type YamlObject = { [key: string]: YamlValue };

export function policyToYaml(policy: SandboxPolicy): string {
  return stringify(policyToDocument(policy), { lineWidth: 0, aliasDuplicateObjects: false });
}

/** The policy as plain data in the YAML schema; also the shape of `-o json` output for a policy. */
export function policyToDocument(policy: SandboxPolicy): YamlObject {
  const doc: YamlObject = { version: policy.version };
  if (policy.filesystem !== undefined) {
    const fs = policy.filesystem;
    doc.filesystem_policy = compact(
      {
        include_workdir: fs.includeWorkdir,
        read_only: fs.readOnly,
        read_write: fs.readWrite,
      },
      ["include_workdir"],
    );
  }
  if (policy.landlock !== undefined) doc.landlock = compact({ compatibility: policy.landlock.compatibility });
  if (policy.process !== undefined) {
    doc.process = compact({ run_as_user: policy.process.runAsUser, run_as_group: policy.process.runAsGroup });
  }
  const rules = sortedEntries(policy.networkPolicies);
  if (rules.length > 0) doc.network_policies = recordOf(rules.map(([key, rule]) => [key, ruleToYaml(rule)]));
  const middlewares = sortedEntries(policy.networkMiddlewares);
  if (middlewares.length > 0) {
    doc.network_middlewares = recordOf(middlewares.map(([key, config]) => [key, middlewareToYaml(config)]));
  }
  return doc;
}

function ruleToYaml(rule: NetworkPolicyRule): YamlObject {
  return compact({
    name: rule.name,
    endpoints: rule.endpoints.map(endpointToYaml),
    binaries: rule.binaries.map((binary) => ({ path: binary.path })),
  });
}

function endpointToYaml(endpoint: NetworkEndpoint): YamlObject {
  const isMcp = isMcpProtocol(endpoint.protocol);
  const { ports } = endpoint;
  // One port is written in the compact `port:` form, several as `ports:`. A lone port 0 must stay
  // a list: as `port: 0` it would read back as "no port".
  const first = ports[0];
  const portFields =
    ports.length > 1 || first === 0
      ? { ports }
      : first !== undefined
        ? { port: first }
        : { port: endpoint.port === 0 ? undefined : endpoint.port };

  const mcpOptions = endpoint.mcp;
  const hasMcpOptions =
    mcpOptions !== undefined &&
    (mcpOptions.strictToolNames !== undefined || mcpOptions.allowAllKnownMcpMethods !== undefined);
  const bodyLimit = endpoint.jsonRpcMaxBodyBytes || undefined;
  // The body limit is one protobuf field; it is written under `mcp` for MCP endpoints (or when MCP
  // options are set) and under `json_rpc` otherwise, which reads back to the same field.
  const mcp =
    isMcp || hasMcpOptions
      ? compact(
          {
            max_body_bytes: bodyLimit,
            strict_tool_names: mcpOptions?.strictToolNames,
            allow_all_known_mcp_methods: mcpOptions?.allowAllKnownMcpMethods,
          },
          ["strict_tool_names", "allow_all_known_mcp_methods"],
        )
      : undefined;
  const jsonRpc =
    !(isMcp || hasMcpOptions) && bodyLimit !== undefined ? { max_body_bytes: bodyLimit } : undefined;

  return compact({
    host: endpoint.host,
    path: endpoint.path,
    ...portFields,
    protocol: endpoint.protocol,
    tls: endpoint.tls,
    enforcement: endpoint.enforcement,
    access: endpoint.access,
    rules: endpoint.rules.map((rule) => ({ allow: matchToYaml(isMcp, rule.allow) })),
    allowed_ips: endpoint.allowedIps,
    deny_rules: endpoint.denyRules.map((rule) => matchToYaml(isMcp, rule)),
    allow_encoded_slash: endpoint.allowEncodedSlash,
    websocket_credential_rewrite: endpoint.websocketCredentialRewrite,
    request_body_credential_rewrite: endpoint.requestBodyCredentialRewrite,
    allow_uninspected_credentials: endpoint.allowUninspectedCredentials,
    persisted_queries: endpoint.persistedQueries,
    graphql_persisted_queries: recordOf(
      sortedEntries(endpoint.graphqlPersistedQueries).map(([key, operation]) => [
        key,
        compact({
          operation_type: operation.operationType,
          operation_name: operation.operationName,
          fields: operation.fields,
        }),
      ]),
    ),
    graphql_max_body_bytes: endpoint.graphqlMaxBodyBytes,
    credential_signing: endpoint.credentialSigning,
    signing_service: endpoint.signingService,
    signing_region: endpoint.signingRegion,
    credential_binding:
      endpoint.credentialBinding === undefined
        ? undefined
        : { provider: endpoint.credentialBinding.provider },
    json_rpc: jsonRpc,
    mcp: mcp !== undefined && Object.keys(mcp).length > 0 ? mcp : undefined,
  });
}

interface Match {
  method: string;
  path: string;
  command: string;
  query: { [key: string]: L7QueryMatcher };
  operationType: string;
  operationName: string;
  fields: string[];
  params: { [key: string]: L7QueryMatcher };
}

function matchToYaml(isMcp: boolean, match: Match | undefined): YamlObject {
  if (match === undefined) return {};
  let params = sortedEntries(match.params);
  let tool: L7QueryMatcher | undefined;
  let paramsYaml: YamlObject;
  if (isMcp) {
    // MCP's params `name` reads better as `tool`; it is split out only when no nested `name.*`
    // param would then shadow it on the way back in.
    const name = match.params.name;
    if (name !== undefined && !params.some(([key]) => key.startsWith("name."))) {
      tool = name;
      params = params.filter(([key]) => key !== "name");
    }
    const nested = nestParams(params);
    paramsYaml = nested === undefined ? flatParams(params) : paramTreeToYaml(nested);
  } else {
    paramsYaml = flatParams(params);
  }
  return compact({
    method: match.method,
    path: match.path,
    command: match.command,
    query: recordOf(sortedEntries(match.query).map(([key, matcher]) => [key, matcherToYaml(matcher)])),
    operation_type: match.operationType,
    operation_name: match.operationName,
    fields: match.fields,
    tool: tool === undefined ? undefined : matcherToYaml(tool),
    params: paramsYaml,
  });
}

function flatParams(params: Array<[string, L7QueryMatcher]>): YamlObject {
  return recordOf(params.map(([key, matcher]) => [key, matcherToYaml(matcher)]));
}

function paramTreeToYaml(tree: ParamTree): YamlObject {
  return recordOf(
    [...tree.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, node]) => [
        key,
        "matcher" in node ? matcherToYaml(node.matcher) : paramTreeToYaml(node.children),
      ]),
  );
}

function matcherToYaml(matcher: L7QueryMatcher): YamlValue {
  return matcher.any.length > 0 ? { any: matcher.any } : matcher.glob;
}

function middlewareToYaml(config: NetworkMiddlewareConfig): YamlObject {
  return compact(
    {
      name: config.name,
      middleware: config.middleware,
      order: config.order,
      config: config.config,
      on_error: config.onError,
      endpoints:
        config.endpoints === undefined
          ? undefined
          : compact({ include: config.endpoints.include, exclude: config.endpoints.exclude }),
    },
    ["endpoints"],
  );
}

export function isMcpProtocol(protocol: string): boolean {
  return protocol.toLowerCase() === "mcp";
}

/**
 * Drops the values upstream's serializer skips: undefined, "", 0, false, empty lists and empty
 * mappings. Keys in `keep` are dropped only when undefined: their false or empty value means
 * something (`include_workdir: false`, `strict_tool_names: false`, an empty endpoint selector).
 */
function compact(fields: YamlObject, keep: readonly string[] = []): YamlObject {
  const kept: Array<[string, YamlValue]> = [];
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    if (!keep.includes(key)) {
      if (value === "" || value === 0 || value === false) continue;
      if (Array.isArray(value) && value.length === 0) continue;
      if (isPlainObject(value) && Object.keys(value).length === 0) continue;
    }
    kept.push([key, value]);
  }
  return recordOf(kept);
}

function isPlainObject(value: unknown): value is YamlObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
