// `--policy <file>` for the CLI: read, parse and validate, failing with one message that says
// everything wrong with the file, before any RPC is made.

import { readFile } from "node:fs/promises";
import { invalidInput, messageOf } from "../core/errors.js";
import { parsePolicyYaml } from "../core/policy/parse.js";
import { formatPolicyViolations, validatePolicy } from "../core/policy/validate.js";
import type { SandboxPolicy } from "../gen/sandbox.js";

/**
 * The policy in the file at `path`. Throws an `invalid_input` OpenShellError when the file cannot be
 * read (`failed to read sandbox policy from <path>: <reason>`), is not a valid policy document
 * (`<path>:<line>:<col>: ...`), or breaks a safety rule (`<path>: policy contains unsafe content:
 * v1; v2; ...`, the gateway's own wording).
 */
export async function loadPolicyFile(path: string): Promise<SandboxPolicy> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    throw invalidInput(`failed to read sandbox policy from ${path}: ${readReason(error)}`);
  }
  const policy = parsePolicyYaml(text, path);
  const violations = validatePolicy(policy);
  if (violations.length > 0) {
    throw invalidInput(
      `${path}: ${formatPolicyViolations(violations)}`,
      "fix the listed entries and try again",
    );
  }
  return policy;
}

function readReason(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === "ENOENT") return "no such file";
  if (code === "EACCES") return "permission denied";
  if (code === "EISDIR") return "is a directory, not a file";
  return messageOf(error);
}
