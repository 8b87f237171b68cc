import { describe, expect, it } from "vitest";
import { OpenShellError } from "../../src/core/errors.js";
import {
  generateSandboxName,
  imageReference,
  parseEnvFlag,
  parseLabelFlag,
  parseSelector,
  validateCommand,
  validateEnvironment,
  validateExecRequest,
  validateLabels,
  validateSandboxName,
  validateSelector,
  validateWorkspaceName,
} from "../../src/core/names.js";

/** The message a parse* function throws, checking it is the CLI's invalid-input error. */
function thrown(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(OpenShellError);
    expect((error as OpenShellError).code).toBe("invalid_input");
    expect((error as OpenShellError).exitCode).toBe(1);
    return (error as OpenShellError).message;
  }
  throw new Error("expected an error");
}

describe("validateSandboxName", () => {
  it("accepts DNS labels up to 19 bytes", () => {
    expect(validateSandboxName("my-sandbox-1")).toBeUndefined();
    expect(validateSandboxName("a".repeat(19))).toBeUndefined();
    expect(validateSandboxName("0")).toBeUndefined();
  });

  it("refuses a 20-byte name with the upstream message", () => {
    expect(validateSandboxName("a".repeat(20))).toBe("name exceeds maximum length (20 > 19)");
  });

  it("counts bytes, not characters", () => {
    expect(validateSandboxName("é".repeat(10))).toBe("name exceeds maximum length (20 > 19)");
  });

  it("refuses characters outside [a-z0-9-]", () => {
    const message = "name must contain only lowercase alphanumeric characters or hyphens";
    expect(validateSandboxName("MySandbox")).toBe(message);
    expect(validateSandboxName("my_sandbox")).toBe(message);
    expect(validateSandboxName("my.sandbox")).toBe(message);
    expect(validateSandboxName("é")).toBe(message);
  });

  it("refuses a hyphen at either end", () => {
    expect(validateSandboxName("-abc")).toBe("name must not start or end with a hyphen");
    expect(validateSandboxName("abc-")).toBe("name must not start or end with a hyphen");
  });

  it("refuses consecutive hyphens", () => {
    expect(validateSandboxName("a--b")).toBe("name must not contain consecutive hyphens");
  });
});

describe("generateSandboxName", () => {
  it("always produces two words that pass validation", () => {
    for (let i = 0; i < 2000; i++) {
      const name = generateSandboxName();
      expect(validateSandboxName(name), name).toBeUndefined();
      expect(name).toMatch(/^[a-z]+(-[a-z]+)?$/);
      expect(name.length).toBeLessThanOrEqual(19);
      expect(name.length).toBeGreaterThan(0);
    }
  });

  it("varies", () => {
    const names = new Set(Array.from({ length: 50 }, () => generateSandboxName()));
    expect(names.size).toBeGreaterThan(10);
  });
});

describe("parseLabelFlag", () => {
  it("splits at the first '='", () => {
    expect(parseLabelFlag("team=agents")).toEqual(["team", "agents"]);
    expect(parseLabelFlag("example.com/tier=ab")).toEqual(["example.com/tier", "ab"]);
    expect(parseLabelFlag("team=")).toEqual(["team", ""]);
  });

  it("refuses a missing '=' with the upstream message", () => {
    expect(thrown(() => parseLabelFlag("team"))).toBe("invalid label format 'team', expected key=value");
  });

  it("refuses a value with a further '=' (not a valid label value) naming the flag", () => {
    expect(thrown(() => parseLabelFlag("team=a=b"))).toBe(
      "--label team=a=b: label value for 'team' contains invalid characters (must be alphanumeric, '-', '_', or '.'): 'a=b'",
    );
  });

  it("applies the Kubernetes rules", () => {
    expect(thrown(() => parseLabelFlag("=x"))).toBe("--label =x: label key cannot be empty");
  });
});

describe("validateLabels", () => {
  it("accepts Kubernetes-style labels", () => {
    expect(
      validateLabels({
        app: "web",
        "kubernetes.io/app": "x",
        "example.com/my_label.v2": "A-b_c.9",
        empty: "",
        [`${"a".repeat(63)}`]: "v".repeat(63),
      }),
    ).toBeUndefined();
  });

  it("refuses bad keys, naming the key", () => {
    expect(validateLabels({ "": "v" })).toBe("label key cannot be empty");
    expect(validateLabels({ ["a".repeat(64)]: "v" })).toBe(
      `label key name segment exceeds 63 characters: '${"a".repeat(64)}'`,
    );
    expect(validateLabels({ [`${"p".repeat(200)}.io/${"n".repeat(53)}`]: "v" })).toMatch(
      /^label key exceeds 253 characters: 'p{200}\.io\/n{53}'$/,
    );
    expect(validateLabels({ "example.com/": "v" })).toBe(
      "label key name segment cannot be empty: 'example.com/'",
    );
    expect(validateLabels({ "/app": "v" })).toBe(
      "label key prefix cannot be empty when '/' is present: '/app'",
    );
    expect(validateLabels({ "my app": "v" })).toBe(
      "label key name segment contains invalid characters (must be alphanumeric, '-', '_', or '.'): 'my app'",
    );
    expect(validateLabels({ _app: "v" })).toBe(
      "label key name segment must start with alphanumeric character: '_app'",
    );
    expect(validateLabels({ "app.": "v" })).toBe(
      "label key name segment must end with alphanumeric character: 'app.'",
    );
    for (const key of ["Example.com/app", "-ex.com/app", "ex..com/app", "ex.com-/app", "a/b/c"]) {
      expect(validateLabels({ [key]: "v" })).toMatch(
        new RegExp(`^label key (prefix|name).*: '${key.replace(/\./g, "\\.")}'$`),
      );
    }
  });

  it("refuses bad values, naming the key", () => {
    expect(validateLabels({ team: "v".repeat(64) })).toBe(
      `label value for 'team' exceeds 63 characters: '${"v".repeat(64)}'`,
    );
    expect(validateLabels({ team: "a b" })).toBe(
      "label value for 'team' contains invalid characters (must be alphanumeric, '-', '_', or '.'): 'a b'",
    );
    expect(validateLabels({ team: "-a" })).toBe(
      "label value for 'team' must start and end with an alphanumeric character: '-a'",
    );
    expect(validateLabels({ team: "a." })).toBe(
      "label value for 'team' must start and end with an alphanumeric character: 'a.'",
    );
  });

  it("refuses non-ASCII letters, which Kubernetes refuses", () => {
    expect(validateLabels({ équipe: "x" })).toMatch(/invalid characters/);
  });
});

describe("parseSelector", () => {
  it("parses pairs, trimming blanks and skipping empty pairs", () => {
    expect(parseSelector("team=agents, tier = web,")).toEqual({ team: "agents", tier: "web" });
    expect(parseSelector("")).toEqual({});
    expect(parseSelector("team=")).toEqual({ team: "" });
  });

  it("refuses malformed pairs", () => {
    expect(thrown(() => parseSelector("team"))).toBe(
      "invalid label selector: expected 'key=value', got 'team'",
    );
    expect(thrown(() => parseSelector("=x"))).toBe("invalid label selector: key cannot be empty in '=x'");
    expect(thrown(() => parseSelector("team=-x"))).toBe(
      "invalid label selector 'team=-x': label value for 'team' must start and end with an alphanumeric character: '-x'",
    );
  });

  it("allows 64 pairs and refuses 65", () => {
    const pairs = (n: number) => Array.from({ length: n }, (_, i) => `k${i}=v`).join(",");
    expect(Object.keys(parseSelector(pairs(64)))).toHaveLength(64);
    expect(thrown(() => parseSelector(pairs(65)))).toBe("label selector exceeds 64 pair limit");
  });

  it("gives the gateway the same message without throwing", () => {
    expect(validateSelector("team=agents")).toBeUndefined();
    expect(validateSelector("team")).toBe("invalid label selector: expected 'key=value', got 'team'");
  });
});

describe("parseEnvFlag", () => {
  it("splits at the first '=', trims the key and keeps the value whole", () => {
    expect(parseEnvFlag("FOO=bar")).toEqual(["FOO", "bar"]);
    expect(parseEnvFlag(" FOO =a=b= ")).toEqual(["FOO", "a=b= "]);
    expect(parseEnvFlag("_X1=")).toEqual(["_X1", ""]);
  });

  it("uses the upstream messages", () => {
    expect(thrown(() => parseEnvFlag("FOO"))).toBe("--env expects KEY=VALUE, got 'FOO'");
    expect(thrown(() => parseEnvFlag(" =x"))).toBe("--env key cannot be empty");
    expect(thrown(() => parseEnvFlag("1FOO=x"))).toBe(
      "--env key must match [A-Za-z_][A-Za-z0-9_]*; got '1FOO'",
    );
    expect(thrown(() => parseEnvFlag("MY-VAR=x"))).toBe(
      "--env key must match [A-Za-z_][A-Za-z0-9_]*; got 'MY-VAR'",
    );
    expect(thrown(() => parseEnvFlag("OPENSHELL_X=1"))).toBe(
      "--env keys starting with OPENSHELL_ are reserved; got 'OPENSHELL_X'",
    );
  });

  it("refuses values the gateway would refuse", () => {
    expect(thrown(() => parseEnvFlag("A=x\ny"))).toBe(
      "--env value for 'A' contains newline or carriage return characters",
    );
    expect(thrown(() => parseEnvFlag("A=x\0y"))).toBe("--env value for 'A' contains null bytes");
  });
});

describe("validateEnvironment", () => {
  it("accepts an environment at every limit", () => {
    const env: Record<string, string> = {};
    for (let i = 0; i < 128; i++) env[`K${i}`] = "v";
    expect(validateEnvironment(env)).toBeUndefined();
    expect(validateEnvironment({ ["K".repeat(256)]: "v".repeat(8192) })).toBeUndefined();
  });

  it("refuses 129 entries", () => {
    const env: Record<string, string> = {};
    for (let i = 0; i < 129; i++) env[`K${i}`] = "v";
    expect(validateEnvironment(env, "spec.environment")).toBe(
      "spec.environment exceeds maximum entries (129 > 128)",
    );
  });

  it("refuses long keys and values", () => {
    expect(validateEnvironment({ ["K".repeat(257)]: "v" })).toBe(
      "environment key exceeds maximum length (257 > 256)",
    );
    expect(validateEnvironment({ A: "v".repeat(8193) })).toBe(
      "environment value for 'A' exceeds maximum length (8193 > 8192)",
    );
  });

  it("refuses a total over 256 KiB and accepts exactly 256 KiB", () => {
    const env: Record<string, string> = {};
    // 32 entries of key 8 bytes + value 8184 bytes = 32 × 8192 = 262144.
    for (let i = 0; i < 32; i++) env[`KEY${String(i).padStart(5, "0")}`] = "v".repeat(8184);
    expect(validateEnvironment(env)).toBeUndefined();
    env.KEY00000 = "v".repeat(8185);
    expect(validateEnvironment(env)).toBe("environment total size exceeds 262144 byte limit (262145 bytes)");
  });

  it("refuses bad keys, reserved keys and control characters", () => {
    expect(validateEnvironment({ "A-B": "x" })).toBe(
      "environment keys must match ^[A-Za-z_][A-Za-z0-9_]*$; got 'A-B'",
    );
    expect(validateEnvironment({ OPENSHELL_TOKEN: "x" }, "spec.environment")).toBe(
      "spec.environment keys starting with OPENSHELL_ are reserved; got 'OPENSHELL_TOKEN'",
    );
    expect(validateEnvironment({ OPENSHELL_PYFUNC_B64: "x" })).toMatch(/are reserved/);
    expect(validateEnvironment({ A: "x\ry" })).toBe(
      "environment value for 'A' contains newline or carriage return characters",
    );
    expect(validateEnvironment({ A: "x\0y" })).toBe("environment value for 'A' contains null bytes");
  });
});

describe("validateCommand", () => {
  it("accepts an empty argv (the default shell) and newlines in arguments", () => {
    expect(validateCommand([])).toBeUndefined();
    expect(validateCommand(["bash", "-c", "echo a\necho b"])).toBeUndefined();
  });

  it("enforces the argument count, argv[0], sizes and NUL", () => {
    expect(validateCommand(Array(256).fill("x"))).toBeUndefined();
    expect(validateCommand(Array(257).fill("x"))).toBe("spec.command exceeds 256 argument limit");
    expect(validateCommand(["", "x"])).toBe("spec.command[0] must not be empty");
    expect(validateCommand(["x", "a".repeat(32 * 1024)])).toBeUndefined();
    expect(validateCommand(["x", "a".repeat(32 * 1024 + 1)])).toBe(
      "spec.command[1] exceeds 32768 byte limit",
    );
    expect(validateCommand(Array(8).fill("a".repeat(32 * 1024)))).toBeUndefined();
    expect(validateCommand([...Array(8).fill("a".repeat(32 * 1024)), "b"])).toBe(
      "spec.command total size exceeds 262144 byte limit",
    );
    expect(validateCommand(["x", "a\0b"], "command")).toBe("command[1] contains null bytes");
  });
});

describe("validateExecRequest", () => {
  it("accepts a plain request", () => {
    expect(
      validateExecRequest({ command: ["ls", "-la"], workdir: "/sandbox", environment: { A: "1" } }),
    ).toBe(undefined);
  });

  it("requires a command and caps it at 1024 arguments of 32 KiB", () => {
    expect(validateExecRequest({ command: [] })).toBe("command is required");
    expect(validateExecRequest({ command: Array(1024).fill("x") })).toBeUndefined();
    expect(validateExecRequest({ command: Array(1025).fill("x") })).toBe(
      "command array exceeds 1024 argument limit",
    );
    expect(validateExecRequest({ command: ["echo", "a".repeat(32 * 1024 + 1)] })).toBe(
      "command argument 1 exceeds 32768 byte limit",
    );
    expect(validateExecRequest({ command: ["echo", "a\0"] })).toBe("command argument 1 contains null bytes");
    expect(validateExecRequest({ command: ["bash", "-c", "a\nb"] })).toBeUndefined();
  });

  it("checks environment keys, allowing only OPENSHELL_PYFUNC_B64 of the reserved ones", () => {
    expect(
      validateExecRequest({ command: ["x"], environment: { OPENSHELL_PYFUNC_B64: "abc" } }),
    ).toBeUndefined();
    expect(validateExecRequest({ command: ["x"], environment: { OPENSHELL_X: "1" } })).toBe(
      "environment keys starting with OPENSHELL_ are reserved; got 'OPENSHELL_X'",
    );
    expect(validateExecRequest({ command: ["x"], environment: { "1A": "1" } })).toBe(
      "environment keys must match ^[A-Za-z_][A-Za-z0-9_]*$; got '1A'",
    );
  });

  it("checks environment values", () => {
    expect(
      validateExecRequest({ command: ["x"], environment: { A: "v".repeat(32 * 1024) } }),
    ).toBeUndefined();
    expect(validateExecRequest({ command: ["x"], environment: { A: "v".repeat(32 * 1024 + 1) } })).toBe(
      "environment value for 'A' exceeds 32768 byte limit",
    );
    expect(validateExecRequest({ command: ["x"], environment: { A: "a\nb" } })).toBe(
      "environment value for 'A' contains newline or carriage return characters",
    );
    expect(validateExecRequest({ command: ["x"], environment: { A: "a\0b" } })).toBe(
      "environment value for 'A' contains null bytes",
    );
  });

  it("checks the workdir", () => {
    expect(validateExecRequest({ command: ["x"], workdir: `/${"w".repeat(4095)}` })).toBeUndefined();
    expect(validateExecRequest({ command: ["x"], workdir: `/${"w".repeat(4096)}` })).toBe(
      "workdir exceeds 4096 byte limit",
    );
    expect(validateExecRequest({ command: ["x"], workdir: "/a\nb" })).toBe(
      "workdir contains newline or carriage return characters",
    );
    expect(validateExecRequest({ command: ["x"], workdir: "/a\0b" })).toBe("workdir contains null bytes");
  });
});

describe("validateWorkspaceName", () => {
  it("accepts the empty string (the default workspace on the wire) and DNS labels up to 19 bytes", () => {
    expect(validateWorkspaceName("")).toBeUndefined();
    expect(validateWorkspaceName("default")).toBeUndefined();
    expect(validateWorkspaceName("a".repeat(19))).toBeUndefined();
  });

  it("refuses a path, a NUL, a newline, upper case and 20 bytes, naming the workspace", () => {
    for (const bad of ["../../etc", "a\u0000b", "a\nb", "Team"]) {
      expect(validateWorkspaceName(bad)).toBe(
        "workspace must contain only lowercase alphanumeric characters or hyphens",
      );
    }
    expect(validateWorkspaceName("a".repeat(20))).toBe("workspace exceeds maximum length (20 > 19)");
    expect(validateWorkspaceName("a--b")).toBe("workspace must not contain consecutive hyphens");
  });
});

describe("imageReference", () => {
  it("puts a community name under the community registry, tagged latest, and leaves any other source as it is", () => {
    expect(imageReference("base")).toBe("ghcr.io/nvidia/openshell-community/sandboxes/base:latest");
    expect(imageReference("ollama", "127.0.0.1:5000/mine//")).toBe("127.0.0.1:5000/mine/ollama:latest");
    for (const source of ["team/img", "img:1", "registry.example.com", "/abs/img.tar", "Base", "a.b"]) {
      expect(imageReference(source)).toBe(source);
    }
  });
});
