// SSH through the supervisor's relay. A gateway reaches a local sandbox's SSH
// socket directly; every other supervisor (one that dials in from elsewhere)
// is reached through ConnectSupervisor/RelayStream. OPENSHELL_SSH_VIA_RELAY=1
// makes this gateway use the relay for local sandboxes too, so that path is
// exercised end to end: exec with stdin and exit codes, an upload, a download.
// The supervisor logs each relay it serves; the log shows which path was taken.

import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TestEnv, uniqueName } from "../helpers/cli.js";

const RELAYED = /relaying (ssh-proxy|exec):\S+ to the sandbox SSH server/g;

function gatewayLog(env: TestEnv): string {
  return readFileSync(join(env.stateHome, "openshell", "gateways", "local", "gateway.log"), "utf8");
}

for (const viaRelay of [true, false]) {
  describe(
    viaRelay ? "SSH through the supervisor's relay" : "SSH straight to a local sandbox's socket",
    () => {
      const env = new TestEnv();
      const name = uniqueName(viaRelay ? "relay" : "direct");

      beforeAll(async () => {
        await env.startGateway(viaRelay ? { OPENSHELL_SSH_VIA_RELAY: "1" } : {});
        const created = await env.createIdle(name);
        expect(created.code, created.stderr).toBe(0);
      });
      afterAll(() => env.dispose());

      it("exec passes stdin, output and the exit status", async () => {
        const result = await env.run(["sandbox", "exec", "-n", name, "--", "sh", "-c", "cat; exit 42"], {
          input: "through\n",
        });
        expect([result.code, result.stdout]).toEqual([42, "through\n"]);
      });

      it("an upload lands byte-identical and downloads back", async () => {
        const tree = join(env.root, "tree");
        mkdirSync(tree);
        const content = randomBytes(3_000_000);
        writeFileSync(join(tree, "blob.bin"), content);
        const up = await env.run(["sandbox", "upload", name, tree, "/sandbox"]);
        expect(up.code, up.stderr).toBe(0);
        const back = join(env.root, "back");
        const down = await env.run(["sandbox", "download", name, "/sandbox/tree", back]);
        expect(down.code, down.stderr).toBe(0);
        expect(readFileSync(join(back, "blob.bin")).equals(content)).toBe(true);
      });

      it(viaRelay ? "went through the relay" : "did not use the relay", () => {
        const relayed = gatewayLog(env).match(RELAYED) ?? [];
        if (viaRelay) expect(relayed.length).toBeGreaterThanOrEqual(3);
        else expect(relayed).toEqual([]);
      });
    },
  );
}
