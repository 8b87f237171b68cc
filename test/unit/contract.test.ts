import { describe, expect, it } from "vitest";
import { SupervisorLaunchSpec, SupervisorStatusReport } from "../../src/gen/openshell.js";
import {
  parseSupervisorEndpoint,
  REPORT_TEXT_MAX,
  readSupervisorEnv,
  reportFromWire,
  reportToWire,
  SUPERVISOR_ENV,
  type SupervisorLaunch,
  type SupervisorReport,
  supervisorEnv,
} from "../../src/runtime/contract.js";

const ID = "0b7c2c7e-9a43-4c1e-8d7e-3f3c1d2a9b10";

/** A launch through the bytes a gateway sends and a supervisor decodes. */
function overTheWire(launch: SupervisorLaunch): SupervisorLaunch {
  return SupervisorLaunchSpec.decode(SupervisorLaunchSpec.encode(launch).finish());
}

function reportOverTheWire(report: SupervisorReport): SupervisorReport | undefined {
  const bytes = SupervisorStatusReport.encode(reportToWire(ID, report)).finish();
  return reportFromWire(SupervisorStatusReport.decode(bytes));
}

const minimal: SupervisorLaunch = {
  sandboxId: ID,
  sandboxName: "dev",
  workspace: "default",
  instanceId: "instance-1",
  sandboxDir: "/var/lib/openshell/sandboxes/x",
  hostUid: 0,
  hostGid: 0,
  diskBytes: 0,
  appRoot: "/opt/openshell",
  command: [],
  tty: false,
  environment: {},
  startOnAttach: false,
  ttyCols: 0,
  ttyRows: 0,
  filesPath: "",
  filePaths: [],
  cgroupProcs: [],
  shmBytes: 0,
  imageRoot: "",
  workingDir: "",
  imageUser: "",
};

describe("the launch spec", () => {
  it("carries every field of a full launch unchanged", () => {
    const full: SupervisorLaunch = {
      ...minimal,
      hostUid: 100_123,
      hostGid: 100_124,
      diskBytes: 8 * 1024 ** 3,
      reownFrom: { uid: 100_001, gid: 100_002 },
      command: ["python3", "-c", "print('é\\n')", ""],
      tty: true,
      environment: { A: "1", EMPTY: "", UNICODE: "ü→✓" },
      startOnAttach: true,
      ttyCols: 132,
      ttyRows: 43,
      filesPath: "/var/lib/openshell/sandboxes/x/files.pb",
      filePaths: ["/sandbox/b.txt", "/sandbox/a.txt"],
      cgroupProcs: ["/sys/fs/cgroup/memory/openshell/x/cgroup.procs"],
      shmBytes: 64 * 1024 ** 2,
      execCgroup: { dir: "/sys/fs/cgroup/freezer/openshell/x", freezer: true },
      imageRoot: "/var/lib/openshell/images/roots/ab12",
      workingDir: "/app",
      imageUser: "1000:1000",
    };
    expect(overTheWire(full)).toEqual(full);
  });

  it("leaves unset what a launch leaves unset: no disk, no reown, 80x24, files fetched over gRPC", () => {
    const decoded = overTheWire(minimal);
    expect(decoded).toEqual(minimal);
    expect(decoded.reownFrom).toBeUndefined();
  });
});

describe("the supervisor's environment", () => {
  const identity = { sandboxId: ID, endpoint: "unix:///run/openshell/supervisor.sock", secret: "s3cret" };

  it("names the sandbox, the gateway and the credential, and reads back the same", () => {
    const env = supervisorEnv(identity);
    expect(Object.keys(env).sort()).toEqual(
      ["OPENSHELL_ENDPOINT", "OPENSHELL_SANDBOX_ID", "OPENSHELL_SANDBOX_SECRET"].sort(),
    );
    expect(readSupervisorEnv({ PATH: "/bin", ...env })).toEqual(identity);
  });

  it("is a spare's (no sandbox yet) without a sandbox id", () => {
    expect(readSupervisorEnv({ [SUPERVISOR_ENV.endpoint]: identity.endpoint })).toBeUndefined();
  });

  it("refuses a sandbox id without its credential or gateway, naming the variable", () => {
    const env = supervisorEnv(identity);
    expect(() => readSupervisorEnv({ ...env, [SUPERVISOR_ENV.secret]: undefined })).toThrow(
      /^OPENSHELL_SANDBOX_SECRET is not set/,
    );
    expect(() => readSupervisorEnv({ ...env, [SUPERVISOR_ENV.endpoint]: "" })).toThrow(
      /^OPENSHELL_ENDPOINT is not set/,
    );
  });

  it("carries a pod's TLS files and sandbox directory, and reads them back", () => {
    const pod = {
      sandboxId: ID,
      endpoint: "gateway.openshell.svc:17670",
      secret: "s3cret",
      tls: { ca: "/etc/openshell/tls/ca.crt", cert: undefined, key: undefined },
      sandboxDir: "/var/lib/openshell/sandbox",
    };
    const env = supervisorEnv(pod);
    expect(env.OPENSHELL_TLS_CA).toBe("/etc/openshell/tls/ca.crt");
    expect("OPENSHELL_TLS_CERT" in env).toBe(false);
    expect(readSupervisorEnv(env)).toEqual(pod);
  });

  it("refuses a client certificate without its key, naming both variables", () => {
    expect(() =>
      readSupervisorEnv({
        ...supervisorEnv(identity),
        [SUPERVISOR_ENV.tlsCert]: "/etc/openshell/tls/tls.crt",
      }),
    ).toThrow("OPENSHELL_TLS_CERT and OPENSHELL_TLS_KEY go together");
  });
});

describe("parseSupervisorEndpoint", () => {
  it("dials host:port and https:// with TLS, http:// in plaintext, and a Unix socket as it is", () => {
    expect(parseSupervisorEndpoint("gateway.openshell.svc:17670")).toEqual({
      kind: "tcp",
      target: "gateway.openshell.svc:17670",
      tls: true,
    });
    expect(parseSupervisorEndpoint("https://10.0.0.1:443")).toEqual({
      kind: "tcp",
      target: "10.0.0.1:443",
      tls: true,
    });
    expect(parseSupervisorEndpoint("http://[::1]:8080/")).toEqual({
      kind: "tcp",
      target: "[::1]:8080",
      tls: false,
    });
    expect(parseSupervisorEndpoint("unix:///run/s.sock")).toEqual({
      kind: "unix",
      target: "unix:///run/s.sock",
    });
  });

  it("refuses anything else, naming the variable and the forms it takes", () => {
    for (const bad of ["gateway", "ftp://gateway:21", "gateway:port", "https://gateway:1/path"]) {
      expect(() => parseSupervisorEndpoint(bad)).toThrow(
        `OPENSHELL_ENDPOINT=${bad}: expected host:port (TLS), https://host:port, http://host:port or unix:///path`,
      );
    }
  });
});

describe("supervisor reports", () => {
  const reports: SupervisorReport[] = [
    { kind: "failure", reason: "FileInjectionFailed", message: "could not write /sandbox/a" },
    { kind: "progress", step: "InjectingFiles", message: "Writing 2 injected file(s)" },
    { kind: "warning", message: "no seccomp" },
    { kind: "liveness", responsive: false, message: "agent silent for 10 s" },
    { kind: "liveness", responsive: true, message: "" },
  ];
  for (const report of reports) {
    it(`carries a ${report.kind} report unchanged`, () => {
      expect(reportOverTheWire(report)).toEqual(report);
    });
  }

  it("bounds what a supervisor says: long text cut, a reason or step that is not a word replaced", () => {
    const long = "x".repeat(REPORT_TEXT_MAX + 1000);
    expect(reportOverTheWire({ kind: "failure", reason: "Bad\nReason", message: long })).toEqual({
      kind: "failure",
      reason: "SupervisorFailed",
      message: "x".repeat(REPORT_TEXT_MAX),
    });
    expect(reportOverTheWire({ kind: "progress", step: "\u001b[2J", message: "m" })).toEqual({
      kind: "progress",
      step: "Progress",
      message: "m",
    });
  });

  it("ignores a report that says nothing", () => {
    expect(reportFromWire({ sandboxId: ID })).toBeUndefined();
  });
});
