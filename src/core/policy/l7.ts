// Which combinations of L7 endpoint fields make sense (upstream's l7_validate): a protocol needs
// something that defines the allowed traffic, presets and rules exclude each other, explicit `tcp`
// takes no L7 fields, and so on. Each reason is bare; the caller says which endpoint it is about.

import type { NetworkEndpoint } from "../../gen/sandbox.js";

const L7_PROTOCOLS = ["rest", "websocket", "graphql", "sql", "json-rpc", "mcp"] as const;
type L7Protocol = (typeof L7_PROTOCOLS)[number];

const GRAPHQL_OPERATION_TYPES = ["query", "mutation", "subscription"];

function l7Protocol(protocol: string): L7Protocol | undefined {
  const lower = protocol.toLowerCase();
  return (L7_PROTOCOLS as readonly string[]).includes(lower) ? (lower as L7Protocol) : undefined;
}

/** `tcp` spells out plain L4 handling; it is not an inspection protocol. */
export function isExplicitTcp(protocol: string): boolean {
  return protocol.toLowerCase() === "tcp";
}

/** Every reason the endpoint's L7 configuration is inconsistent. */
export function l7EndpointErrors(ep: NetworkEndpoint): string[] {
  const errors: string[] = [];
  const protocol = l7Protocol(ep.protocol);
  const explicitTcp = isExplicitTcp(ep.protocol);
  const isMcp = protocol === "mcp";
  const isJsonRpc = protocol === "json-rpc";
  const hasRules = ep.rules.length > 0;
  const hasDenyRules = ep.denyRules.length > 0;
  const hasAccess = ep.access !== "";
  const allowAllKnownMcpMethods = ep.mcp?.allowAllKnownMcpMethods ?? false;
  // Rules that exist but name nothing to allow would deny everything (query alone does not count,
  // as upstream decides).
  const rulesWouldDenyAll =
    hasRules &&
    ep.rules.every(
      ({ allow }) =>
        allow === undefined ||
        (allow.method === "" &&
          allow.path === "" &&
          allow.command === "" &&
          allow.operationType === "" &&
          allow.operationName === "" &&
          allow.fields.length === 0 &&
          Object.keys(allow.params).length === 0),
    );

  if (ep.protocol !== "" && protocol === undefined && !explicitTcp) {
    errors.push(
      `unknown protocol '${ep.protocol}' (expected tcp, rest, websocket, graphql, sql, json-rpc, or mcp)`,
    );
  }
  if (explicitTcp && (hasAccess || hasRules || hasDenyRules)) {
    errors.push("protocol tcp does not support access, rules, or deny_rules; remove those L7 fields");
  }
  if (hasRules && hasAccess) errors.push("rules and access are mutually exclusive");
  if ((isMcp || isJsonRpc) && hasAccess) {
    errors.push(
      isMcp
        ? `protocol ${ep.protocol} does not support access presets; use rules/deny_rules or set mcp.allow_all_known_mcp_methods: true for an allow-all MCP policy`
        : `protocol ${ep.protocol} does not support access presets; use explicit rules with allow.method such as "*"`,
    );
  }
  if (isJsonRpc && !hasRules && !hasAccess) {
    errors.push(`protocol ${ep.protocol} requires explicit rules with allow.method`);
  }
  // An empty `rules: []` reads as no rules, so it lands here too.
  if (protocol !== undefined && !isMcp && !isJsonRpc && !hasRules && !hasAccess) {
    errors.push("protocol requires rules or access to define allowed traffic");
  }
  if (isMcp && !hasRules && !hasAccess && !allowAllKnownMcpMethods) {
    errors.push("protocol mcp requires rules when mcp.allow_all_known_mcp_methods is false");
  }
  // With allow_all_known_mcp_methods, MCP normalisation supplies `method: "*"` to such rules.
  if (rulesWouldDenyAll && !(isMcp && allowAllKnownMcpMethods)) {
    errors.push(
      "rules would deny all traffic (no allow clause found). Use `access: full` or add allow clauses to rules.",
    );
  }
  if (hasDenyRules && protocol === undefined) {
    errors.push("deny_rules require protocol (L7 inspection must be enabled)");
  }
  if (hasDenyRules && !isMcp && !hasRules && !hasAccess) {
    errors.push("deny_rules require rules or access to define the base allow set");
  }

  const l7OnlyFields = explicitTcp ? presentL7OnlyFields(ep) : [];
  if (l7OnlyFields.length > 0) {
    errors.push(
      `protocol tcp does not support L7-only fields: ${l7OnlyFields.join(", ")}; remove those fields`,
    );
  }
  if (ep.path !== "" && !ep.path.startsWith("/") && ep.path !== "**") {
    errors.push("path must start with '/' or be '**'");
  }
  if (
    ep.persistedQueries !== "" &&
    ep.persistedQueries !== "deny" &&
    ep.persistedQueries !== "allow_registered"
  ) {
    errors.push(`persisted_queries must be 'deny' or 'allow_registered', got '${ep.persistedQueries}'`);
  }
  if (ep.protocol === "sql" && ep.enforcement === "enforce") {
    errors.push("SQL enforcement requires full SQL parsing; use enforcement: audit");
  }
  if (ep.mcp !== undefined && ep.protocol !== "mcp") {
    errors.push("mcp options are only valid for protocol mcp");
  }
  if (ep.protocol === "graphql") {
    const expected = "must be query, mutation, or subscription";
    ep.rules.forEach(({ allow }, index) => {
      if (!GRAPHQL_OPERATION_TYPES.includes(allow?.operationType ?? "")) {
        errors.push(`rules[${index}].allow.operation_type ${expected}`);
      }
    });
    ep.denyRules.forEach((rule, index) => {
      if (!GRAPHQL_OPERATION_TYPES.includes(rule.operationType)) {
        errors.push(`deny_rules[${index}].operation_type ${expected}`);
      }
    });
    for (const [key, operation] of Object.entries(ep.graphqlPersistedQueries)) {
      if (!GRAPHQL_OPERATION_TYPES.includes(operation.operationType)) {
        errors.push(`graphql_persisted_queries[${key}].operation_type ${expected}`);
      }
    }
  }
  return errors;
}

function presentL7OnlyFields(ep: NetworkEndpoint): string[] {
  const present: Array<[string, boolean]> = [
    ["enforcement", ep.enforcement !== ""],
    ["path", ep.path !== ""],
    ["allow_encoded_slash", ep.allowEncodedSlash],
    ["websocket_credential_rewrite", ep.websocketCredentialRewrite],
    ["request_body_credential_rewrite", ep.requestBodyCredentialRewrite],
    ["persisted_queries", ep.persistedQueries !== ""],
    ["graphql_persisted_queries", Object.keys(ep.graphqlPersistedQueries).length > 0],
    ["graphql_max_body_bytes", ep.graphqlMaxBodyBytes > 0],
    ["json_rpc_max_body_bytes", ep.jsonRpcMaxBodyBytes > 0],
    ["mcp", ep.mcp !== undefined],
  ];
  return present.filter(([, isSet]) => isSet).map(([name]) => name);
}
