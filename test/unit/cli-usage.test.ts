// Every command's usage errors and their exit codes, run in-process: 2 for the
// CLI's own usage errors, 240 for those of `sandbox exec`, `sandbox connect`
// and a `sandbox create` that attaches, parse errors included, since they pass
// a remote command's status through (README "Exit codes").
// The endpoint points at a closed port, so a command line that got past its
// checks and reached for a gateway fails with another code instead of
// starting one.

import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ListSandboxesResponse } from "../../src/gen/openshell.js";
import { runCli } from "../helpers/run-cli.js";
import { startStandIn } from "../helpers/stand-in.js";

let root: string;
const env = { OPENSHELL_GATEWAY_ENDPOINT: "http://127.0.0.1:1" };

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "openshell-cli-usage-"));
  vi.stubEnv("XDG_CONFIG_HOME", join(root, "config"));
  vi.stubEnv("XDG_STATE_HOME", join(root, "state"));
});

afterAll(() => {
  vi.unstubAllEnvs();
  rmSync(root, { recursive: true, force: true });
});

/** [command line, exit code, what stderr says] */
const usageErrors: [string[], number, RegExp][] = [
  [["no-such-command"], 2, /unknown command 'no-such-command'/],
  [["--no-such-flag"], 2, /unknown option '--no-such-flag'/],
  [["sandbox", "create", "--attach", "--detach"], 2, /--attach cannot be combined with --detach/],
  [["sandbox", "create", "--no-keep", "-o", "json"], 2, /--no-keep cannot be combined with -o/],
  [["sandbox", "create", "-o", "xml"], 2, /argument 'xml' is invalid.*table, json, yaml/],
  [["sandbox", "get", "a", "b"], 2, /too many arguments/],
  [["sandbox", "list", "--limit", "ten"], 2, /--limit ten: expected a whole number/],
  [["sandbox", "list", "--limit", "0"], 2, /--limit 0: expected a whole number from 1 to 1000/],
  [["sandbox", "list", "--names", "-o", "json"], 2, /--names/],
  [["sandbox", "delete"], 2, /sandbox delete: missing sandbox name/],
  [["sandbox", "delete", "a", "--all"], 2, /give sandbox names or --all, not both/],
  [["sandbox", "create", "--ttl", "soon"], 2, /--ttl soon: expected a duration such as 30m/],
  [["sandbox", "create", "--ttl", "0s"], 2, /--ttl 0s: expected a duration/],
  [["sandbox", "stop", "a", "b"], 2, /too many arguments/],
  [["sandbox", "start", "a", "b"], 2, /too many arguments/],
  [["sandbox", "renew", "a"], 2, /required option '--ttl <duration>' not specified/],
  [
    ["sandbox", "renew", "a", "--ttl", "1y"],
    2,
    /--ttl 1y: expected a duration such as 30m, 1h, 1h30m or 90s/,
  ],
  [["image", "pull"], 2, /missing required argument 'source'/],
  [["image", "rm"], 2, /missing required argument 'image'/],
  [["image", "list", "-o", "xml"], 2, /argument 'xml' is invalid/],
  [["image", "prune", "extra"], 2, /too many arguments/],
  [["logs", "x", "--raw", "-o", "json"], 2, /--raw cannot be combined with -o json/],
  [["logs", "x", "-o", "yaml"], 2, /argument 'yaml' is invalid.*text, json/],
  [["sandbox", "upload", "x", ".", "-o", "yaml"], 2, /argument 'yaml' is invalid/],
  [["sandbox", "download", "x", "p", "-o", "xml"], 2, /argument 'xml' is invalid/],
  [["sandbox", "delete", "x", "-o", "yaml"], 2, /argument 'yaml' is invalid/],
  [["sandbox", "wait", "x", "--timeout", "soon"], 240, /--timeout soon: expected a whole number/],
  [["sandbox", "wait", "x", "--timeout", "-1"], 240, /--timeout -1: expected whole seconds/],
  [["sandbox", "wait", "x", "--no-such-flag"], 240, /unknown option '--no-such-flag'/],
  [["sandbox", "wait", "a", "b"], 240, /too many arguments/],
  [["sandbox", "exec", "-o", "xml", "--", "true"], 240, /argument 'xml' is invalid/],
  [["sandbox", "exec", "-n", "x"], 240, /missing required argument 'command'/],
  [["sandbox", "exec", "--timeout", "soon", "--", "true"], 240, /--timeout soon: expected a whole number/],
  [["sandbox", "exec", "--no-such-flag", "--", "true"], 240, /unknown option '--no-such-flag'/],
  [["sandbox", "exec", "-n", "x", "--env", "1BAD=x", "--", "true"], 240, /1BAD/],
  [
    ["sandbox", "exec", "-n", "x", "--timeout", "-1", "--", "true"],
    240,
    /--timeout -1: expected whole seconds/,
  ],
  [["sandbox", "connect", "a", "b"], 240, /too many arguments/],
  [["sandbox", "connect", "--no-such-flag"], 240, /unknown option '--no-such-flag'/],
  [["sandbox", "create", "--attach", "--no-such-flag"], 240, /unknown option '--no-such-flag'/],
  [["sandbox", "create", "--no-keep", "-o", "xml"], 240, /argument 'xml' is invalid/],
  [["sandbox", "create", "--attach", "--name", "Bad_Name"], 240, /--name Bad_Name/],
  [["sandbox", "create", "--no-such-flag"], 2, /unknown option '--no-such-flag'/],
  [["sandbox", "create", "--name", "Bad_Name"], 1, /--name Bad_Name/],
  [["sandbox", "upload", "a"], 2, /missing required argument 'local'/],
  [["sandbox", "download", "a"], 2, /missing required argument 'path'/],
  [["sandbox", "ssh-config", "a", "b"], 2, /too many arguments/],
  [["logs", "-n", "0"], 2, /-n 0: expected a positive whole number/],
  [["logs", "--level", "loud"], 2, /--level loud: expected one of error, warn, info, debug, trace/],
  [["gateway", "start", "--port", "70000"], 2, /--port 70000: expected a port from 0 to 65535/],
  [["gateway", "start", "--tls-cert", "gw.crt"], 2, /--tls-cert and --tls-key go together/],
  [
    ["gateway", "start", "--driver", "nomad"],
    2,
    /--driver nomad: expected local \(the default\) or kubernetes/,
  ],
  [["gateway", "start", "--kube-context", "kind-a"], 2, /--kube-context needs --driver kubernetes/],
  [["gateway", "start", "--driver", "kubernetes"], 2, /--driver kubernetes needs TLS: add --tls/],
  [["gateway", "stop", "extra"], 2, /too many arguments/],
  [["gateway", "list", "-o", "xml"], 2, /argument 'xml' is invalid/],
  [["gateway", "select", "a", "b"], 2, /too many arguments/],
  [["gateway", "add"], 2, /missing required argument 'endpoint'/],
  [["gateway", "remove"], 2, /missing required argument 'name'/],
  [["status", "-o", "xml"], 2, /argument 'xml' is invalid/],
  [["ssh-proxy", "--no-such-flag"], 2, /unknown option '--no-such-flag'/],
  [["policy", "nope"], 2, /unknown command 'nope'/],
  [["policy", "get", "a", "b"], 2, /too many arguments/],
  [["policy", "get", "a", "-o", "xml"], 2, /argument 'xml' is invalid/],
  [["policy", "get", "a", "--rev", "first"], 2, /--rev first: expected a whole number/],
  [["policy", "get", "a", "--rev", "0"], 2, /--rev 0: expected 1 or more/],
  [["policy", "set", "a"], 2, /required option '--policy <file>' not specified/],
  [["policy", "set", "a", "b", "--policy", "p.yaml"], 2, /too many arguments/],
  [
    ["policy", "set", "a", "--policy", "p.yaml", "--timeout", "soon"],
    2,
    /--timeout soon: expected a whole number/,
  ],
  [
    ["policy", "set", "a", "--policy", "p.yaml", "--timeout", "0"],
    2,
    /--timeout 0: expected 1 or more seconds/,
  ],
  [
    ["policy", "set", "a", "--policy", "/no/such/policy.yaml"],
    1,
    /failed to read sandbox policy from \/no\/such\/policy.yaml: no such file/,
  ],
  [["whoami", "extra"], 2, /too many arguments/],
  [["whoami", "-o", "xml"], 2, /argument 'xml' is invalid/],
  [["completions"], 2, /missing required argument 'shell'/],
  [
    ["completions", "tcsh"],
    2,
    /value 'tcsh' is invalid for argument 'shell'\. Allowed choices are bash, zsh, fish/,
  ],
  [["forward", "start"], 2, /missing required argument 'port'/],
  [["forward", "start", "http"], 2, /PORT http: invalid forward spec: expected \[bind_address:\]port/],
  [["forward", "start", "70000", "x"], 2, /PORT 70000: port must be between 1 and 65535/],
  [["forward", "start", "0", "x"], 2, /PORT 0: port must be between 1 and 65535/],
  [["forward", "start", ":8080", "x"], 2, /PORT :8080: the bind address before ':' is empty/],
  [["forward", "start", "8080", "x", "y"], 2, /too many arguments/],
  [["forward", "start", "8080", "x", "--no-such-flag"], 2, /unknown option '--no-such-flag'/],
  [["forward", "stop"], 2, /missing required argument 'port'/],
  [["forward", "stop", "eighty"], 2, /PORT eighty: expected a whole number/],
  [["forward", "stop", "0"], 2, /PORT 0: port must be between 1 and 65535/],
  [["forward", "stop", "8080"], 1, /No active forward found for port 8080/],
  [["forward", "stop", "8080", "x"], 1, /No active forward found for port 8080 on sandbox x/],
  [["forward", "list", "-o", "yaml"], 2, /argument 'yaml' is invalid.*table, json/],
  [["forward", "list", "extra"], 2, /too many arguments/],
  [["forward", "service", "x"], 2, /required option '--target-port <port>' not specified/],
  [["forward", "service", "x", "--target-port", "0"], 2, /--target-port 0: port must be between 1 and 65535/],
  [
    ["forward", "service", "x", "--target-port", "80", "--local", "a:b"],
    2,
    /--local a:b: invalid forward spec/,
  ],
  [
    ["forward", "service", "x", "--target-port", "80", "--target-host", "10.0.0.1"],
    2,
    /--target-host 10\.0\.0\.1: only the sandbox's loopback can be reached/,
  ],
  [["fwd", "start", "x"], 2, /PORT x: invalid forward spec/],
  [["sandbox", "create", "--forward", "web"], 2, /--forward web: invalid forward spec/],
  [
    ["sandbox", "create", "--no-keep", "--forward", "8080", "--", "true"],
    2,
    /--no-keep cannot be combined with --forward/,
  ],
  [["sandbox", "create", "--forward", "8080", "-o", "json"], 2, /--forward cannot be combined with -o/],
  [["sandbox", "create", "--forward", "8080", "--no-keep", "-o", "json"], 2, /--no-keep cannot be combined/],
  [
    ["sandbox", "create", "--detach", "--no-keep", "--forward", "8080"],
    2,
    /--no-keep cannot be combined with --detach/,
  ],
];

describe("usage errors, in-process", () => {
  it.each(usageErrors)("openshell %j exits %i", async (args, code, message) => {
    const result = await runCli(args, { env });
    expect(result.stderr).toMatch(message);
    expect(result.exitCode, result.stderr).toBe(code);
    expect(result.stdout).toBe("");
  });

  it("prints help and the version on stdout with exit code 0", async () => {
    const help = await runCli(["sandbox", "exec", "--help"], { env });
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toContain("Usage: openshell sandbox exec [options] <command...>");
    expect(help.stdout).toContain("openshell sandbox exec --timeout 60 --env DEBUG=1 -- make test");
    const version = await runCli(["--version"], { env });
    expect(version.exitCode).toBe(0);
    expect(version.stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  });

  it("runs command lines side by side without sharing their exit codes", async () => {
    const [exec, list] = await Promise.all([
      runCli(["sandbox", "exec", "-n", "x", "--env", "1BAD=x", "--", "true"], { env }),
      runCli(["sandbox", "list", "--limit", "0"], { env }),
    ]);
    expect([exec.exitCode, list.exitCode]).toEqual([240, 2]);
  });

  it("status and gateway status give the same report, naming the gateway, with no empty Resolution note", async () => {
    const top = await runCli(["status"], { env });
    const under = await runCli(["gateway", "status"], { env });
    expect(top.exitCode, top.stderr).toBe(1);
    expect(top.stdout).toMatch(/Status: Disconnected/);
    expect(top.stdout).toContain("Error: failed to connect to gateway 'http://127.0.0.1:1'");
    expect(top.stdout + top.stderr).not.toMatch(/Resolution note/);
    expect(under).toEqual(top);
    const json = await runCli(["gateway", "status", "-o", "json"], { env });
    expect(JSON.parse(json.stdout).error).not.toMatch(/Resolution note|Error: Error/);
  });

  it("reaches no gateway and starts none", async () => {
    const unreachable = await runCli(["sandbox", "exec", "-n", "x", "--", "true"], { env });
    expect(unreachable.exitCode, unreachable.stderr).toBe(241);
    expect(readdirSync(root)).not.toContain("state");
  });
});

describe("the commands' modules", () => {
  it("import no other command: what two commands share lives in src/cli/", () => {
    const dir = join(import.meta.dirname, "../../src/cli/commands");
    const files = readdirSync(dir).filter((file) => file.endsWith(".ts"));
    expect(files.length).toBeGreaterThanOrEqual(13);
    const crossings = files.flatMap((file) =>
      [...readFileSync(join(dir, file), "utf8").matchAll(/(?:from|import\()\s*"(\.\/[^"]+)"/g)].map(
        (match) => `${file} imports ${match[1]}`,
      ),
    );
    expect(crossings).toEqual([]);
  });
});

describe("completions, in-process", () => {
  it("prints a script for each shell that asks `openshell complete --` on each TAB", async () => {
    for (const shell of ["bash", "zsh", "fish"]) {
      const script = await runCli(["completions", shell], { env });
      expect(script.exitCode, script.stderr).toBe(0);
      expect(script.stdout).toContain("openshell complete --");
    }
  });

  it("completes commands, aliases, options and choices, without a gateway (none is started)", async () => {
    const complete = async (...words: string[]) => {
      const result = await runCli(["complete", "--", ...words], { env });
      expect(result.exitCode, result.stderr).toBe(0);
      return result.stdout
        .split("\n")
        .filter((line) => line !== "" && !line.startsWith(":"))
        .map((line) => line.split("\t")[0]);
    };
    expect(await complete("sandbox", "ex")).toEqual(["exec"]);
    expect(await complete("sb", "ex")).toEqual(["exec"]);
    expect(await complete("sandbox", "exec", "--t")).toEqual(["--timeout", "--tty"]);
    expect(await complete("sandbox", "list", "-o", "")).toEqual(["table", "json", "yaml"]);
    expect(await complete("sandbox", "exec", "-n", "")).toEqual([]);
    expect(readdirSync(root)).not.toContain("state");
  });

  it("offers a gateway's sandbox names only when they are valid names", async () => {
    const standIn = await startStandIn({
      listSandboxes: (_call: unknown, callback: (e: null, r: unknown) => void) =>
        callback(
          null,
          ListSandboxesResponse.fromPartial({
            sandboxes: ["web", "evil\tname\n:0", "\u001b]0;x\u0007", "Upper"].map((name) => ({
              metadata: { name },
            })),
          }),
        ),
    });
    try {
      const result = await runCli(["complete", "--", "sandbox", "get", ""], {
        env: { OPENSHELL_GATEWAY_ENDPOINT: standIn.endpoint },
      });
      expect(result.exitCode, result.stderr).toBe(0);
      expect(result.stdout).toBe("web\t\n:4\n");
    } finally {
      standIn.server.forceShutdown();
    }
  });
});
