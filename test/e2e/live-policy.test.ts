// Live policy updates through the real CLI, gateway, supervisor and egress
// proxy: a running sandbox's network rules change with `policy set`, without
// a restart; a connection opened before keeps going while new ones follow the
// new rules; a change only a restart could bring is refused with why; the
// revision in force is shown and survives a gateway restart; a caller
// without the gateway's token is refused; and the calls upstream's own
// clients make (its SDK's getConfig / setPolicy) get the answers they expect.
//
// The test host is an HTTP server in a network namespace of its own
// (helpers/netns.ts), named example.test. The proxy, in the supervisor,
// resolves names with the system resolver, so the gateway and the
// supervisors it starts run in a mount namespace whose /etc/hosts maps
// example.test to the host (TestEnv.addHosts); the machine's /etc/hosts is
// left alone. Revision 1 allows the host only by its address, so the sandbox
// is denied example.test on every port until a rule names it.

import { readFileSync, writeFileSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import type { ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parsePolicyYaml, policyHash } from "../../src/core/policy.js";
import {
  PolicyStatus,
  type SandboxResponse,
  UpdateConfigRequest,
  type UpdateConfigResponse,
} from "../../src/gen/openshell.js";
import type { GetSandboxConfigResponse } from "../../src/gen/sandbox.js";
import { connectGateway } from "../../src/transport/grpc.js";
import { gatewayClient, gatewayTarget, json, TestEnv, uniqueName, waitForOutput } from "../helpers/cli.js";
import { FILESYSTEM, netnsUnavailable, startTestHost, type TestHost } from "../helpers/netns.js";

const NETNS_UNAVAILABLE = netnsUnavailable();

/** The test host's name, which only the gateway's mount namespace resolves. */
const NAME = "example.test";

function allowing(endpoints: [host: string, port: number][], filesystem = FILESYSTEM): string {
  const lines = endpoints.map(([host, port]) => `      - { host: ${host}, port: ${port} }\n`);
  return `${filesystem}network_policies:\n  lab:\n    name: lab\n    endpoints:\n${lines.join("")}`;
}

/** What curl gets from the proxy for a host and port no rule allows. */
const denied = (host: string, port: number): string =>
  `egress to ${host}:${port} denied: not allowed by any network policy\n403\n`;

interface PolicyDocument {
  version: number;
  active_version: number;
  status: string;
  hash: string;
}

/** A unary call of the generated client as a promise (the way upstream's SDK makes it: no extra metadata). */
function rpc<Res>(
  start: (callback: (error: ServiceError | null, response: Res) => void) => unknown,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((error, response) => (error ? reject(error) : resolve(response)));
  });
}

describe.skipIf(NETNS_UNAVAILABLE !== undefined)(
  `policy set on a running sandbox${NETNS_UNAVAILABLE ? ` (skipped: ${NETNS_UNAVAILABLE})` : ""}`,
  () => {
    const env = new TestEnv();
    const stranger = new TestEnv();
    const name = uniqueName("live-pol");
    let host: TestHost;
    let first = 0;
    let second = 0;
    const file = (label: string, text: string): string => {
      const path = join(env.root, `${label}.yaml`);
      writeFileSync(path, text);
      return path;
    };
    const exec = (script: string) =>
      env.run(["sandbox", "exec", "-n", name, "--", "bash", "-c", script], { timeoutMs: 60_000 });
    /** What curl in the sandbox gets from `target:port`: the body, or the proxy's refusal, then the status. */
    const fetch = async (target: string, port: number, path: string): Promise<string> =>
      (await exec(`curl -sS -m 10 -w '%{http_code}\\n' http://${target}:${port}${path}`)).stdout;
    const policyGet = async (): Promise<PolicyDocument> => {
      const result = await env.run(["policy", "get", name, "-o", "json"], { timeoutMs: 30_000 });
      expect(result.code, result.stderr).toBe(0);
      return json<PolicyDocument>(result);
    };

    beforeAll(async () => {
      host = await startTestHost(2, 1);
      [first, second] = host.ports as [number, number];
      await env.addHosts({ [NAME]: host.address });
      await env.startGateway();
      const created = await env.createIdle(name, { timeoutMs: 60_000 }, [
        "--policy",
        file("first", allowing([[host.address, first]])),
      ]);
      expect(created.code, created.stderr).toBe(0);
    });

    afterAll(async () => {
      await env.dispose();
      await stranger.dispose();
      host?.remove();
    });

    it("starts at revision 1: the first port answers at its address, example.test is refused by the proxy on both", async () => {
      const policy = await policyGet();
      expect(policy.version).toBe(1);
      expect(["pending", "loaded"]).toContain(policy.status);
      expect(await fetch(host.address, first, "/before")).toBe(`hello ${first} /before\n200\n`);
      expect(await fetch(NAME, first, "/before")).toBe(denied(NAME, first));
      expect(await fetch(NAME, second, "/before")).toBe(denied(NAME, second));
    });

    it("policy set --wait puts revision 2 (example.test) in force at once: new connections follow it, one opened before keeps going", async () => {
      // A tunnel to the first port, open (its response half sent) before the update.
      const held = env.spawn([
        "sandbox",
        "exec",
        "-n",
        name,
        "--",
        "curl",
        "-sS",
        "-N",
        "-m",
        "120",
        "--proxytunnel",
        `http://${host.address}:${first}/hold`,
      ]);
      const heldOut = waitForOutput(held.stdout!, "released", "the held connection's end", 90_000);
      await waitForOutput(held.stdout!, `held ${first}`, "the held connection's first line");

      const set = await env.run(
        ["policy", "set", name, "--policy", file("second", allowing([[NAME, second]])), "--wait"],
        { timeoutMs: 90_000 },
      );
      expect(set.code, set.stderr).toBe(0);
      expect(set.stderr).toContain(`Policy revision 2 in force on sandbox ${name}`);

      expect(await fetch(NAME, second, "/after")).toBe(`hello ${second} /after\n200\n`);
      expect(await fetch(host.address, first, "/after")).toBe(denied(host.address, first));
      // The tunnel opened under revision 1 still carries its bytes.
      await new Promise<void>((resolve, reject) =>
        request({ host: host.address, port: first, path: "/release" }, (res) =>
          res.resume().on("end", resolve),
        )
          .on("error", reject)
          .end(),
      );
      expect(await heldOut).toBe(`held ${first}\nreleased\n`);

      const policy = await policyGet();
      expect(policy).toMatchObject({ version: 2, active_version: 2, status: "loaded" });
      const sandbox = json<{ current_policy_version: number }>(
        await env.run(["sandbox", "get", name, "-o", "json"]),
      );
      expect(sandbox.current_policy_version).toBe(2);
      const table = await env.run(["sandbox", "get", name]);
      expect(table.stdout).toContain("Policy revision: 2 in force");
    });

    it("setting the same policy again stores no new revision", async () => {
      const set = await env.run(["policy", "set", name, "--policy", join(env.root, "second.yaml")]);
      expect(set.code, set.stderr).toBe(0);
      expect(set.stderr).toContain("Policy unchanged (revision 2");
    });

    it("refuses a filesystem change, exit 1, saying it needs a restart; revision 2 stays", async () => {
      const widened = FILESYSTEM.replace("/dev/urandom]", "/dev/urandom, /var]");
      const set = await env.run([
        "policy",
        "set",
        name,
        "--policy",
        file("filesystem", allowing([[NAME, second]], widened)),
      ]);
      expect(set.code).toBe(1);
      expect(set.stderr).toContain(
        "filesystem_policy cannot change on a running sandbox: it is applied when the sandbox starts",
      );
      const identity = await env.run([
        "policy",
        "set",
        name,
        "--policy",
        file("process", `${allowing([[NAME, second]])}process:\n  run_as_user: "4242"\n`),
      ]);
      expect(identity.code).toBe(1);
      expect(identity.stderr).toContain(
        "process (run_as_user, run_as_group) cannot change on a running sandbox",
      );
      expect(await policyGet()).toMatchObject({ version: 2, active_version: 2 });
    });

    it("refuses a caller without the gateway's token, and a user's token on the supervisor's calls", async () => {
      const endpoint = gatewayTarget(env).endpoint;
      for (const args of [
        ["policy", "get", name],
        ["policy", "set", name, "--policy", join(env.root, "first.yaml")],
        ["whoami"],
      ]) {
        const result = await stranger.run(["--gateway-endpoint", endpoint, ...args], { timeoutMs: 30_000 });
        expect(result.code, args.join(" ")).toBe(1);
        expect(result.stderr, args.join(" ")).toContain("not authorized by gateway");
      }
      const client = gatewayClient(env);
      try {
        const { sandbox } = await rpc<SandboxResponse>((cb) =>
          client.getSandbox({ name, workspace: "" }, cb),
        );
        const report = rpc((cb) =>
          client.reportPolicyStatus(
            {
              sandboxId: sandbox!.metadata!.id,
              version: 1,
              status: PolicyStatus.POLICY_STATUS_LOADED,
              loadError: "",
            },
            cb,
          ),
        );
        await expect(report).rejects.toMatchObject({ code: 16 }); // UNAUTHENTICATED
        // With a wrong token, each call by id or by name is refused as well.
        const wrong = connectGateway({ ...gatewayTarget(env), token: "not-the-token" });
        try {
          const sandboxId = sandbox!.metadata!.id;
          for (const call of [
            rpc((cb) => wrong.getSandboxConfig({ sandboxId }, cb)),
            rpc((cb) => wrong.updateConfig(UpdateConfigRequest.fromPartial({ name, policy: {} }), cb)),
            rpc((cb) => wrong.getSandboxPolicyStatus({ name, version: 0, global: false, workspace: "" }, cb)),
            rpc((cb) => wrong.getCurrentUser({}, cb)),
          ]) {
            await expect(call).rejects.toMatchObject({ code: 16 });
          }
        } finally {
          wrong.close();
        }
      } finally {
        client.close();
      }
      expect(await policyGet()).toMatchObject({ version: 2, active_version: 2 });
    });

    it("answers upstream's SDK calls as it expects: getConfig by id after GetSandbox, setPolicy with the whole policy", async () => {
      const both = file(
        "both",
        allowing([
          [host.address, first],
          [NAME, second],
        ]),
      );
      const client = gatewayClient(env);
      try {
        const { sandbox } = await rpc<SandboxResponse>((cb) =>
          client.getSandbox({ name, workspace: "" }, cb),
        );
        const sandboxId = sandbox!.metadata!.id;
        const config = await rpc<GetSandboxConfigResponse>((cb) =>
          client.getSandboxConfig({ sandboxId }, cb),
        );
        expect(config.version).toBe(2);
        expect(config.policyHash).toBe(policyHash(config.policy!));
        // setPolicy: { name, policy, global: false, expectedResourceVersion: 0n }, then polls getConfig for the hash.
        // The policy a file gives, as upstream's SDK user would send what its YAML parses to.
        const policy = parsePolicyYaml(readFileSync(both, "utf8"), "both.yaml");
        const updated = await rpc<UpdateConfigResponse>((cb) =>
          client.updateConfig(
            UpdateConfigRequest.fromPartial({ name, policy, global: false, expectedResourceVersion: 0 }),
            cb,
          ),
        );
        expect(updated.version).toBe(3);
        const again = await rpc<GetSandboxConfigResponse>((cb) => client.getSandboxConfig({ sandboxId }, cb));
        expect(again.policyHash).toBe(updated.policyHash);
        // getConfig().policy sent back into setPolicy, as upstream's SDK documents: no new revision.
        const back = await rpc<UpdateConfigResponse>((cb) =>
          client.updateConfig(UpdateConfigRequest.fromPartial({ name, policy: again.policy! }), cb),
        );
        expect(back).toMatchObject({ version: 3, policyHash: updated.policyHash });
        // A stale resource version is ABORTED, as upstream's optimistic concurrency answers.
        const stale = rpc<UpdateConfigResponse>((cb) =>
          client.updateConfig(
            UpdateConfigRequest.fromPartial({ name, policy: config.policy!, expectedResourceVersion: 1 }),
            cb,
          ),
        );
        await expect(stale).rejects.toMatchObject({ code: 10 });
        const user = await rpc((cb) => client.getCurrentUser({}, cb));
        expect(user).toMatchObject({ identityProvider: "bearer_token", roles: ["owner"] });
        const gatewayConfig = await rpc((cb) => client.getGatewayConfig({}, cb));
        expect(gatewayConfig).toEqual({ settings: {}, settingsRevision: 0 });
        const settings = rpc<UpdateConfigResponse>((cb) =>
          client.updateConfig(
            UpdateConfigRequest.fromPartial({ name, settingKey: "proposal_approval_mode" }),
            cb,
          ),
        );
        await expect(settings).rejects.toMatchObject({ code: 12 }); // UNIMPLEMENTED
        // Nothing global, no incremental merges: precisely UNIMPLEMENTED, each saying what there is instead.
        for (const call of [
          rpc((cb) => client.updateConfig(UpdateConfigRequest.fromPartial({ global: true, policy }), cb)),
          rpc((cb) =>
            client.updateConfig(
              UpdateConfigRequest.fromPartial({
                name,
                mergeOperations: [{ operation: { $case: "removeRule", value: { ruleName: "lab" } } }],
              }),
              cb,
            ),
          ),
          rpc((cb) =>
            client.getSandboxPolicyStatus({ name: "", version: 0, global: true, workspace: "" }, cb),
          ),
        ]) {
          await expect(call).rejects.toMatchObject({ code: 12 });
        }
      } finally {
        client.close();
      }
      // Revision 3, sent as upstream's SDK sends it, is put in force like any other.
      const wait = await env.run(["policy", "set", name, "--policy", both, "--wait"], { timeoutMs: 90_000 });
      expect(wait.code, wait.stderr).toBe(0);
      expect(wait.stderr).toContain("Policy unchanged (revision 3");
      expect(await fetch(host.address, first, "/both")).toBe(`hello ${first} /both\n200\n`);
      expect(await fetch(NAME, second, "/both")).toBe(`hello ${second} /both\n200\n`);
    });

    it("keeps the revisions and what is in force across a gateway restart, and applies the next one", async () => {
      expect(await policyGet()).toMatchObject({ version: 3, active_version: 3, status: "loaded" });
      const stop = await env.run(["gateway", "stop"], { timeoutMs: 60_000 });
      expect(stop.code, stop.stderr).toBe(0);
      await env.startGateway();
      expect(await policyGet()).toMatchObject({ version: 3, active_version: 3, status: "loaded" });
      // The supervisor watches the new gateway: revision 4 is applied as before.
      const set = await env.run(["policy", "set", name, "--policy", join(env.root, "first.yaml"), "--wait"], {
        timeoutMs: 90_000,
      });
      expect(set.code, set.stderr).toBe(0);
      expect(set.stderr).toContain("Policy revision 4 in force");
      expect(await fetch(host.address, first, "/restarted")).toBe(`hello ${first} /restarted\n200\n`);
      expect(await fetch(NAME, second, "/restarted")).toBe(denied(NAME, second));
    });

    it("with every rule removed the proxy refuses all, and rules cannot come back without a restart", async () => {
      const none = await env.run(["policy", "set", name, "--policy", file("none", FILESYSTEM), "--wait"], {
        timeoutMs: 90_000,
      });
      expect(none.code, none.stderr).toBe(0);
      expect(await fetch(host.address, first, "/none")).toBe(denied(host.address, first));
      expect(await fetch(NAME, second, "/none")).toBe(denied(NAME, second));
      const back = await env.run(["policy", "set", name, "--policy", join(env.root, "first.yaml")]);
      expect(back.code).toBe(1);
      expect(back.stderr).toContain("network rules cannot be added to a sandbox running without any");
    });
  },
);
