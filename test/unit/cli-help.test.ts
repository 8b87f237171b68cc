// Every command's --help ends with at least one example, and the top-level
// help lists every exit code of README's "Exit codes" tables. The commands
// are found as a user finds them: in the "Commands:" list of each help,
// walked from the top (the hidden ssh-proxy named as well).

import { describe, expect, it } from "vitest";
import { documentedExitCodes } from "../helpers/cli.js";
import { runCli } from "../helpers/run-cli.js";

const env = { OPENSHELL_GATEWAY_ENDPOINT: "http://127.0.0.1:1" };

async function help(path: string[]): Promise<string> {
  const result = await runCli([...path, "--help"], { env });
  expect(result.exitCode, result.stderr).toBe(0);
  return result.stdout;
}

/** The subcommands a help text lists (without the implicit `help`). */
function subcommands(text: string): string[] {
  const section = /\nCommands:\n([\s\S]*?)(?:\n\n|$)/.exec(text)?.[1] ?? "";
  return [...section.matchAll(/^ {2}([a-z][a-z-]*)/gm)]
    .map((match) => match[1]!)
    .filter((name) => name !== "help");
}

async function allCommands(): Promise<string[][]> {
  const found: string[][] = [];
  const walk = async (path: string[]): Promise<void> => {
    found.push(path);
    for (const name of subcommands(await help(path))) await walk([...path, name]);
  };
  await walk([]);
  found.push(["ssh-proxy"]);
  return found;
}

describe("help", () => {
  it("every command's --help shows at least one example of the command itself", async () => {
    const commands = await allCommands();
    // The tree as it stands: the groups, their commands, and the top level.
    expect(commands.length).toBeGreaterThanOrEqual(22);
    expect(commands).toContainEqual(["sandbox", "get"]);
    expect(commands).toContainEqual(["gateway", "status"]);
    const missing: string[] = [];
    for (const path of commands) {
      const text = await help(path);
      const example = /\nExamples?:\n((?: {2}.*\n?)+)/.exec(text);
      if (!example?.[1]?.includes("openshell")) missing.push(path.join(" ") || "(top level)");
    }
    expect(missing).toEqual([]);
  });

  it("the top-level help lists every exit code in the README's tables", async () => {
    const codes = documentedExitCodes();
    expect(codes.length).toBeGreaterThanOrEqual(8);
    const text = await help([]);
    const listed = text.slice(text.indexOf("Exit codes:"));
    expect(listed).not.toBe("");
    for (const code of codes) expect(listed, `exit code ${code}`).toMatch(new RegExp(`\\b${code}\\b`));
  });
});
