// Sandbox policies: the YAML schema (parse and write back), the safety rules, the default policy.
// One implementation, used by the CLI before sending and by the gateway on receipt.

export { DEFAULT_POLICY, defaultPolicy, IMAGE_POLICY_PATHS } from "./policy/defaults.js";
export { hasNetworkRules, liveChangeProblem, policyHash } from "./policy/live.js";
export { parsePolicyYaml } from "./policy/parse.js";
export { policyToDocument, policyToYaml } from "./policy/serialize.js";
export {
  formatPolicyViolations,
  isValidSandboxIdentity,
  MAX_FILESYSTEM_PATHS,
  MAX_MIDDLEWARE_CONFIGS,
  MAX_MIDDLEWARE_SELECTOR_PATTERNS,
  MAX_PATH_BYTES,
  MAX_POLICY_ENCODED_BYTES,
  MAX_SANDBOX_ID,
  MIN_SANDBOX_ID,
  POLICY_VERSION,
  PROVIDER_RULE_PREFIX,
  policySizeViolation,
  policyVersionWarning,
  shelllessFilesystemViolation,
  validatePolicy,
} from "./policy/validate.js";
