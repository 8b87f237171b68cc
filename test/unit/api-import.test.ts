// Importing the API, and constructing a client, has no side effects: no
// dependency patched, no process spawned, no socket, file watch or timer
// left holding the event loop. Checked in a fresh node process. And it is
// cheap: ssh2 and the tar engine load with the first command or transfer,
// and the YAML parser with the first policy, so a CLI command or a harness
// that only lists, creates or runs a command never pays for them (about 55
// ms of CPU per process for the first two, 15-30 ms for the parser).

import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { ROOT } from "../helpers/cli.js";

const PROBE = `
import { createRequire } from "node:module";
import * as filter from "@grpc/grpc-js/build/src/compression-filter.js";
import { Server } from "@grpc/grpc-js";
const sendMessage = filter.CompressionFilter.prototype.sendMessage;
const serverKeys = Object.getOwnPropertyNames(Server.prototype).join();
const resourcesBefore = process.getActiveResourcesInfo().join();
const api = await import("./src/api/index.ts");
const client = new api.OpenShell({ endpoint: "http://127.0.0.1:9", token: "t" });
client.close();
console.log(JSON.stringify({
  exports: Object.keys(api).sort(),
  patched: filter.CompressionFilter.prototype.sendMessage !== sendMessage
    || Object.getOwnPropertyNames(Server.prototype).join() !== serverKeys,
  resources: process.getActiveResourcesInfo().join() === resourcesBefore,
  lazy: Object.keys(createRequire(import.meta.url).cache).filter((p) => /node_modules\\/(ssh2|tar-stream|yaml)\\//.test(p)),
}));
`;

describe("importing the API", () => {
  it("patches nothing, starts nothing and loads neither ssh2, the tar engine nor the YAML parser", () => {
    const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", PROBE], {
      cwd: ROOT,
      encoding: "utf8",
      env: { ...process.env, OPENSHELL_GATEWAY: "", XDG_CONFIG_HOME: "/nonexistent" },
    });
    const result = JSON.parse(out.trim().split("\n").at(-1)!) as {
      exports: string[];
      patched: boolean;
      resources: boolean;
      lazy: string[];
    };
    expect(result.patched).toBe(false);
    expect(result.resources).toBe(true);
    expect(result.lazy).toEqual([]);
    expect(result.exports).toEqual([
      "AbortError",
      "AlreadyExistsError",
      "InvalidArgumentError",
      "NotAuthorizedError",
      "NotFoundError",
      "OpenShell",
      "OpenShellError",
      "Sandbox",
      "SandboxFailedError",
      "TimeoutError",
      "UnavailableError",
    ]);
  });
});
