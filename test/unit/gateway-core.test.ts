// Pure rules of the gateway and the CLI: log filtering, phase messages,
// exec command construction, exit statuses, secrets comparison, the store.

import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { checkReturnedFiles } from "../../src/api/client.js";
import { formatLogLine, logLineRecord, parseDuration } from "../../src/cli/actions/logs.js";
import { sandboxDocument } from "../../src/cli/output/present.js";
import {
  clearMainCommand,
  mainExitStatus,
  readyFalseMessage,
  setMainCommandCompleted,
  setPhase,
  setReadyCondition,
} from "../../src/core/phases.js";
import { defaultPolicy } from "../../src/core/policy.js";
import { shellEscape, shellJoin } from "../../src/core/shell.js";
import { exitCodeOf } from "../../src/core/signals.js";
import { levelPasses, sourcePasses } from "../../src/gateway/bus.js";
import { secretsEqual } from "../../src/gateway/service.js";
import { buildExecCommand } from "../../src/gateway/ssh.js";
import { hashToken, POLICY_REVISIONS_KEPT, Store } from "../../src/gateway/store.js";
import { PolicyStatus, type Sandbox, SandboxPhase } from "../../src/gen/openshell.js";
import {
  FILE_CONTENT_NAME,
  fileContentPath,
  readFileContent,
  writeFileContent,
} from "../../src/runtime/file-content.js";

function sandbox(name = "s"): Sandbox {
  return {
    metadata: {
      id: `id-${name}`,
      name,
      createdAtMs: Date.now(),
      labels: { team: "a" },
      resourceVersion: 1,
      annotations: {},
      workspace: "default",
      deletionTimestampMs: 0,
    },
    spec: {
      logLevel: "",
      environment: {},
      providers: [],
      command: ["sleep", "1"],
      tty: false,
      files: [{ path: "/etc/a", content: Buffer.alloc(0), mode: 0o444, size: 3, sha256: "ab" }],
    },
    status: {
      sandboxName: name,
      agentPod: "",
      agentFd: "",
      sandboxFd: "",
      conditions: [],
      phase: SandboxPhase.SANDBOX_PHASE_PROVISIONING,
      currentPolicyVersion: 0,
      mainProcessInstanceId: "",
    },
  };
}

describe("log filters", () => {
  it("passes lines at or above the minimum level, and unknown levels always", () => {
    expect(levelPasses("ERROR", "WARN")).toBe(true);
    expect(levelPasses("INFO", "WARN")).toBe(false);
    expect(levelPasses("OCSF", "INFO")).toBe(true);
    expect(levelPasses("WHATEVER", "ERROR")).toBe(true);
    expect(levelPasses("DEBUG", "")).toBe(true);
  });

  it("treats an empty source as gateway and 'all' as no filter", () => {
    expect(sourcePasses("", ["gateway"])).toBe(true);
    expect(sourcePasses("sandbox", ["gateway"])).toBe(false);
    expect(sourcePasses("sandbox", ["all"])).toBe(true);
    expect(sourcePasses("sandbox", [])).toBe(true);
  });

  it("formats a line as upstream does", () => {
    const line = formatLogLine({
      sandboxId: "x",
      timestampMs: 1_700_000_000_123,
      level: "info",
      target: "stdout",
      message: "hello",
      source: "",
      fields: { b: "2", a: "1" },
    });
    expect(line).toBe("[1700000000.123] [gateway] [INFO ] [stdout] hello a=1 b=2");
  });

  it("parses --since durations and refuses other units", () => {
    expect(parseDuration("30s")).toBe(30_000);
    expect(parseDuration("5m")).toBe(300_000);
    expect(parseDuration("1h")).toBe(3_600_000);
    expect(() => parseDuration("5d")).toThrow(/unknown duration unit: 5d/);
    expect(() => parseDuration("soon")).toThrow(/invalid duration: soon/);
  });
});

describe("phases and conditions", () => {
  it("records a completed main command beside Ready, and forgets it for a new run", () => {
    const s = sandbox();
    setPhase(s, SandboxPhase.SANDBOX_PHASE_READY);
    setReadyCondition(s, "True", "DependenciesReady", "Supervisor session connected");
    expect(mainExitStatus(s)).toBeUndefined();
    expect(sandboxDocument(s).main_exit_status).toBeNull();
    setMainCommandCompleted(s, 3);
    expect(mainExitStatus(s)).toBe(3);
    expect(readyFalseMessage(s)).toBe("");
    const doc = sandboxDocument(s, { full: true });
    expect(doc).toMatchObject({ phase: "Ready", exit_code: 3, main_exit_status: 3 });
    expect(doc.conditions).toContainEqual(
      expect.objectContaining({
        type: "MainCommand",
        status: "True",
        reason: "Completed",
        message: "exit status 3",
      }),
    );
    expect(doc.created_at).toBe(new Date(s.metadata!.createdAtMs).toISOString());
    clearMainCommand(s);
    expect(mainExitStatus(s)).toBeUndefined();
    expect(s.status!.exitCode).toBeUndefined();
    expect(s.status!.conditions.map((c) => c.type)).toEqual(["Ready"]);
  });

  it("a log line as a JSON Lines record", () => {
    const record = JSON.parse(
      logLineRecord({
        sandboxId: "x",
        timestampMs: 1_700_000_000_123,
        level: "warn",
        target: "stderr",
        message: "oops",
        source: "sandbox",
        fields: {},
      }),
    );
    expect(record).toEqual({
      time: "2023-11-14T22:13:20.123Z",
      source: "sandbox",
      stream: "stderr",
      level: "WARN",
      message: "oops",
    });
  });

  it("prefers 'reason: message' of a Ready=False condition", () => {
    const s = sandbox();
    expect(readyFalseMessage(s)).toBe("");
    setReadyCondition(s, "False", "FileInjectionFailed", "/etc/a: refused");
    expect(readyFalseMessage(s)).toBe("FileInjectionFailed: /etc/a: refused");
    setReadyCondition(s, "True", "DependenciesReady", "ok");
    expect(readyFalseMessage(s)).toBe("");
    expect(s.status!.conditions).toHaveLength(1);
  });

  it("bumps the resource version on every phase change", () => {
    const s = sandbox();
    setPhase(s, SandboxPhase.SANDBOX_PHASE_READY);
    expect(s.status!.phase).toBe(SandboxPhase.SANDBOX_PHASE_READY);
    expect(s.metadata!.resourceVersion).toBe(2);
  });
});

describe("exec command construction", () => {
  it("sorts env, escapes every argument and prefixes the workdir, as upstream", () => {
    expect(
      buildExecCommand({
        command: ["sh", "-c", "echo $HOME 'q'"],
        environment: { B: "2 3", A: "x" },
        workdir: "/w d",
      }),
    ).toBe(`cd '/w d' && A=x B='2 3' sh -c 'echo $HOME '"'"'q'"'"''`);
    expect(buildExecCommand({ command: ["true"], environment: {}, workdir: "" })).toBe("true");
  });

  it("quotes shell arguments safely", () => {
    expect(shellEscape("")).toBe("''");
    expect(shellEscape("a/b.c_d-e")).toBe("a/b.c_d-e");
    expect(shellJoin(["a b", "it's"])).toBe(`'a b' 'it'"'"'s'`);
    expect(() => shellEscape("a\0b")).toThrow(/NUL/);
  });

  it("reports a death by signal N as 128 + N", () => {
    expect(exitCodeOf(0, undefined)).toBe(0);
    expect(exitCodeOf(42, null)).toBe(42);
    expect(exitCodeOf(null, "TERM")).toBe(143);
    expect(exitCodeOf(null, "SIGKILL")).toBe(137);
  });
});

describe("secrets", () => {
  it("compares equal secrets as equal and anything else as not", () => {
    expect(secretsEqual("abc", "abc")).toBe(true);
    expect(secretsEqual("abd", "abc")).toBe(false);
    expect(secretsEqual("ab", "abc")).toBe(false);
    expect(secretsEqual("", "abc")).toBe(false);
  });

  it("stores SSH session tokens only as digests", () => {
    expect(hashToken("t")).toMatch(/^[0-9a-f]{64}$/);
    expect(hashToken("t")).not.toContain("t".repeat(2));
  });
});

describe("returned file digests", () => {
  const sent = [{ path: "/etc/a", content: Buffer.from("abc"), mode: 0o444, size: 3, sha256: "ba78" }];
  it("accepts what was sent and names any difference", () => {
    expect(checkReturnedFiles(sent, [{ ...sent[0]!, content: Buffer.alloc(0) }])).toBeUndefined();
    expect(checkReturnedFiles(sent, [])).toContain("did not keep /etc/a");
    expect(checkReturnedFiles(sent, [{ ...sent[0]!, sha256: "00" }])).toContain("/etc/a");
    expect(checkReturnedFiles(sent, [{ ...sent[0]!, mode: 0o555 }])).toContain("mode");
  });
});

describe("injected-file content", () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("is kept owner-only in the sandbox's directory and read back in order, byte for byte", async () => {
    const here = mkdtempSync(join(tmpdir(), "openshell-content-"));
    dir = here;
    // Only a sandbox with files has the file: its absence is an error, never "no files".
    expect(() => readFileContent(fileContentPath(here), [])).toThrow(/ENOENT/);
    const files = [
      { path: "/etc/a", content: Buffer.from("abc"), mode: 0o444, size: 0, sha256: "" },
      { path: "/sandbox/.agent/SOUL.md", content: randomBytes(70_000), mode: 0o555, size: 0, sha256: "" },
      { path: "/etc/empty", content: Buffer.alloc(0), mode: 0, size: 0, sha256: "" },
    ];
    await writeFileContent(here, files);
    expect(statSync(fileContentPath(here)).mode & 0o777).toBe(0o600);
    expect(readdirSync(here)).toEqual([FILE_CONTENT_NAME]);
    const back = readFileContent(
      fileContentPath(here),
      files.map((f) => f.path),
    );
    expect(back.map((f) => [f.path, f.mode])).toEqual(files.map((f) => [f.path, f.mode]));
    expect(back.map((f, i) => Buffer.from(f.content).equals(files[i]!.content))).toEqual([true, true, true]);
  });
});

describe("the store", () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("keeps the sandbox record and its runtime, private to its owner", () => {
    dir = mkdtempSync(join(tmpdir(), "openshell-store-"));
    const path = join(dir, "openshell.db");
    const store = new Store(path);
    const s = sandbox("one");
    store.createSandbox(s, { sandboxId: "id-one", hostUid: 5, hostGid: 5, supervisorSecret: "secret" });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(store.getSandboxByName("default", "one")?.metadata?.id).toBe("id-one");
    expect(
      store.listSandboxes({ workspace: "default", labels: { team: "a" }, limit: 10, offset: 0 }),
    ).toHaveLength(1);
    expect(
      store.listSandboxes({ workspace: "default", labels: { team: "b" }, limit: 10, offset: 0 }),
    ).toHaveLength(0);
    store.setHostIds("id-one", 6, 7);
    expect(store.getRuntime("id-one")).toMatchObject({ hostUid: 6, hostGid: 7 });

    store.createSshSession({
      tokenHash: hashToken("tok"),
      sandboxId: "id-one",
      expiresAtMs: 1,
      revoked: false,
      createdAtMs: 0,
    });
    expect(store.getSshSession(hashToken("tok"))?.sandboxId).toBe("id-one");
    expect(store.reapSshSessions(Date.now())).toBe(1);

    store.deleteSandbox("id-one");
    expect(store.getRuntime("id-one")).toBeUndefined();
    store.close();
  });

  it("keeps a sandbox's latest 100 policy revisions across a reopen: pending ones superseded, statuses, and gone with the sandbox", () => {
    dir = mkdtempSync(join(tmpdir(), "openshell-store-"));
    const path = join(dir, "openshell.db");
    let store = new Store(path);
    const s = sandbox("one");
    store.createSandbox(s, { sandboxId: "id-one", hostUid: 5, hostGid: 5, supervisorSecret: "secret" });
    const revision = (version: number) => ({
      version,
      hash: `h${version}`,
      policy: { ...defaultPolicy(), version },
      status: PolicyStatus.POLICY_STATUS_PENDING,
      loadError: "",
      createdAtMs: version,
      loadedAtMs: 0,
    });
    store.addPolicyRevision(s, revision(1));
    store.addPolicyRevision(s, revision(2));
    expect(store.setPolicyStatus("id-one", 2, PolicyStatus.POLICY_STATUS_LOADED, "", 99)).toBe(true);
    expect(store.setPolicyStatus("id-one", 7, PolicyStatus.POLICY_STATUS_LOADED, "", 99)).toBe(false);
    store.close();

    store = new Store(path);
    expect(store.policyRevision("id-one")).toMatchObject({
      version: 2,
      status: PolicyStatus.POLICY_STATUS_LOADED,
      loadedAtMs: 99,
      policy: { version: 2 },
    });
    expect(store.policyRevision("id-one", 1)?.status).toBe(PolicyStatus.POLICY_STATUS_SUPERSEDED);
    for (let version = 3; version <= POLICY_REVISIONS_KEPT + 2; version++) {
      store.addPolicyRevision(s, revision(version));
    }
    expect(store.policyRevision("id-one", 2)).toBeUndefined();
    expect(store.policyRevision("id-one", 3)?.version).toBe(3);
    store.deleteSandbox("id-one");
    expect(store.policyRevision("id-one")).toBeUndefined();
    store.close();
  });
});
