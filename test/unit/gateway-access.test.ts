// Access control's pure parts: the constant-time comparison, the token and
// metadata files, start settings and what they pass on, and how TLS
// failures read.

import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Metadata, type ServiceError, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  ensureGatewayToken,
  gatewayProcessArgs,
  insecureWarning,
  localMetadata,
  resolveStartSettings,
  targetFor,
} from "../../src/cli/gateways.js";
import { OpenShellError } from "../../src/core/errors.js";
import { secretsEqual } from "../../src/gateway/service.js";
import { createCertificate, gatewayTlsFiles } from "../../src/gateway/tls.js";
import {
  type GatewayMetadata,
  gatewayConfigDir,
  gatewayTokenPath,
  isLoopbackHost,
  isWildcardBind,
  readMetadata,
  readToken,
  writeMetadata,
} from "../../src/host/config.js";
import { mapGrpcError } from "../../src/transport/grpc.js";

describe("secretsEqual", () => {
  it("accepts only the identical secret", () => {
    const secret = "s3cr3t-token-value";
    expect(secretsEqual(secret, secret)).toBe(true);
    expect(secretsEqual(`${secret}`, secret.slice(0))).toBe(true);
    expect(secretsEqual("s3cr3t-token-valuE", secret)).toBe(false);
    expect(secretsEqual("", secret)).toBe(false);
    expect(secretsEqual(secret.slice(0, -1), secret)).toBe(false);
    expect(secretsEqual(`${secret}x`, secret)).toBe(false);
    expect(secretsEqual(secret, "")).toBe(false);
    // Multi-byte characters compare by bytes, not by UTF-16 units.
    expect(secretsEqual("é", "e\u0301")).toBe(false);
  });

  it("compares every byte whatever the lengths (timingSafeEqual on equal-length buffers)", () => {
    // A prefix of the right length but wrong tail, and a longer value sharing the prefix, both fail
    // without throwing: timingSafeEqual would throw on unequal lengths if they reached it.
    expect(() => secretsEqual("a".repeat(1000), "a")).not.toThrow();
    expect(secretsEqual("a".repeat(1000), "a")).toBe(false);
    expect(secretsEqual("b", "a".repeat(1000))).toBe(false);
  });
});

describe("the token and metadata files", () => {
  const root = mkdtempSync(join(tmpdir(), "openshell-access-unit-"));
  const saved = { config: process.env.XDG_CONFIG_HOME, state: process.env.XDG_STATE_HOME };
  beforeAll(() => {
    process.env.XDG_CONFIG_HOME = join(root, "config");
    process.env.XDG_STATE_HOME = join(root, "state");
  });
  afterAll(() => {
    for (const [key, value] of [
      ["XDG_CONFIG_HOME", saved.config],
      ["XDG_STATE_HOME", saved.state],
    ] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
    rmSync(root, { recursive: true, force: true });
  });

  it("creates a random 256-bit token once, 0600 in a 0700 directory", () => {
    const token = ensureGatewayToken("unit");
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const path = gatewayTokenPath("unit");
    expect(path).toBe(join(root, "config", "openshell", "gateways", "unit", "token"));
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(gatewayConfigDir("unit")).mode & 0o777).toBe(0o700);
    expect(statSync(join(root, "config", "openshell")).mode & 0o777).toBe(0o700);
    expect(ensureGatewayToken("unit")).toBe(token);
    expect(ensureGatewayToken("another")).not.toBe(token);
    expect(readToken(path)).toBe(token);
    expect(readToken(join(root, "missing"))).toBeUndefined();
  });

  it("names an unreadable token file as such", () => {
    // A directory where the file should be: as root, EACCES cannot be staged, but any read error is named.
    expect(() => readToken(join(root, "config"))).toThrow(OpenShellError);
    expect(() => readToken(join(root, "config"))).toThrow(/cannot read the token file .*config/);
  });

  it("records a local gateway's start settings in metadata.json, 0600, and reads them back", () => {
    const settings = resolveStartSettings({ bind: "0.0.0.0", tls: true, sshSessionTtl: 600 }, undefined);
    const tls = gatewayTlsFiles("unit");
    const prepared = { ...settings, tls_cert_file: tls.certFile, tls_key_file: tls.keyFile };
    const metadata = localMetadata("unit", prepared, 4443, undefined);
    expect(metadata).toEqual({
      name: "unit",
      gateway_endpoint: "https://127.0.0.1:4443",
      is_remote: false,
      gateway_port: 4443,
      auth_mode: "bearer",
      local: true,
      local_settings: {
        bind: "0.0.0.0",
        tls_generated: true,
        tls_cert_file: tls.certFile,
        tls_key_file: tls.keyFile,
        ssh_session_ttl_secs: 600,
      },
      ca_file: tls.caFile,
    });
    writeMetadata(metadata);
    const file = join(gatewayConfigDir("unit"), "metadata.json");
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readMetadata("unit")).toEqual(metadata);
    // Upstream's fields keep their names and types.
    const raw = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
    expect(typeof raw.gateway_endpoint).toBe("string");
    expect(typeof raw.is_remote).toBe("boolean");
    expect(typeof raw.gateway_port).toBe("number");
  });

  it("gives the owner's CLI its own client certificate when the gateway requires one", () => {
    const metadata = localMetadata(
      "unit",
      {
        bind: "127.0.0.1",
        tls_generated: true,
        tls_cert_file: "/x/server.crt",
        tls_key_file: "/x/server.key",
        client_ca_file: "/x/clients.crt",
      },
      4443,
      undefined,
    );
    const tls = gatewayTlsFiles("unit");
    expect(metadata.client_cert_file).toBe(tls.clientCertFile);
    expect(metadata.client_key_file).toBe(tls.clientKeyFile);
    expect(metadata.gateway_endpoint).toBe("https://127.0.0.1:4443");
  });

  it("trusts a self-signed --tls-cert as its own CA", async () => {
    const self = await createCertificate({
      commonName: "self",
      hosts: ["127.0.0.1"],
      usage: "ca",
      validityDays: 1,
    });
    const cert = join(root, "self.crt");
    writeFileSync(cert, self.cert);
    const metadata = localMetadata(
      "given",
      { bind: "127.0.0.1", tls_cert_file: cert, tls_key_file: "/k" },
      9,
      undefined,
    );
    expect(metadata.ca_file).toBe(cert);
    expect(metadata.gateway_endpoint).toBe("https://127.0.0.1:9");
  });

  it("builds the CLI's target from metadata: token from its file, never from anywhere else", () => {
    const token = ensureGatewayToken("unit");
    const metadata = readMetadata("unit")!;
    mkdirSync(dirname(metadata.ca_file!), { recursive: true });
    writeFileSync(metadata.ca_file!, "CA PEM");
    const target = targetFor("unit", metadata, {});
    expect(target.token).toBe(token);
    expect(target.endpoint).toBe("https://127.0.0.1:4443");
    expect(target.ca?.toString()).toBe("CA PEM");
    expect(target.insecure).toBe(false);
    expect(target.unauthorizedHint).toMatch(/readable by its owner only/);
    expect(target.unauthorizedHint).not.toContain(token);
    expect(insecureWarning(target)).toBeUndefined();

    const insecure = targetFor("unit", metadata, { gatewayInsecure: true });
    expect(insecureWarning(insecure)).toMatch(
      /^--gateway-insecure: not verifying the TLS certificate of gateway 'unit' \(https:\/\/127\.0\.0\.1:4443\); .* your token\.$/,
    );

    const remote: GatewayMetadata = {
      name: "far",
      gateway_endpoint: "https://gw.example.test:17670",
      is_remote: true,
      gateway_port: 17670,
      ca_file: join(root, "no-such-ca.crt"),
    };
    expect(() => targetFor("far", remote, {})).toThrow(
      /gateway 'far': cannot read its CA certificate .*no-such-ca\.crt: no such file/,
    );
    const noToken = targetFor("far", { ...remote, ca_file: metadata.ca_file! }, {});
    expect(noToken.token).toBeUndefined();
    expect(noToken.unauthorizedHint).toMatch(/needs its owner's token: .*--token-file FILE/);
  });
});

describe("resolveStartSettings", () => {
  it("defaults to plaintext on loopback", () => {
    expect(resolveStartSettings({}, undefined)).toEqual({ bind: "127.0.0.1" });
  });

  it("refuses a network bind without TLS, naming the fix", () => {
    for (const bind of ["0.0.0.0", "::", "192.0.2.1", "gw.example.test"]) {
      const error = (() => {
        try {
          resolveStartSettings({ bind }, undefined);
        } catch (e) {
          return e as OpenShellError;
        }
        throw new Error(`--bind ${bind} was accepted`);
      })();
      expect(error.message).toBe(`--bind ${bind}: a gateway reachable from the network needs TLS`);
      expect(error.hint).toMatch(/--tls/);
      expect(error.exitCode).toBe(1);
    }
    for (const bind of ["127.0.0.1", "127.1.2.3", "::1", "localhost"]) {
      expect(resolveStartSettings({ bind }, undefined).bind).toBe(bind);
    }
  });

  it("keeps the last start's settings when no flag says otherwise", () => {
    const previous = {
      bind: "0.0.0.0",
      tls_generated: true,
      tls_cert_file: "/s/tls/server.crt",
      tls_key_file: "/s/tls/server.key",
      client_ca_file: "/c/clients.crt",
      ssh_session_ttl_secs: 60,
    };
    expect(resolveStartSettings({}, previous)).toEqual(previous);
    // --client-ca alone adds mTLS to the previous TLS.
    expect(
      resolveStartSettings({ clientCa: "/c/other.crt" }, { bind: "0.0.0.0", tls_generated: true }),
    ).toEqual({
      bind: "0.0.0.0",
      tls_generated: true,
      client_ca_file: "/c/other.crt",
    });
    // Any TLS flag replaces the TLS setup, client CA included.
    expect(resolveStartSettings({ tlsCert: "/g/c.pem", tlsKey: "/g/k.pem" }, previous)).toEqual({
      bind: "0.0.0.0",
      tls_cert_file: "/g/c.pem",
      tls_key_file: "/g/k.pem",
      ssh_session_ttl_secs: 60,
    });
    // --no-tls on a network bind is refused; with a loopback bind it drops TLS.
    expect(() => resolveStartSettings({ tls: false }, previous)).toThrow(/needs TLS/);
    expect(resolveStartSettings({ tls: false, bind: "127.0.0.1" }, previous)).toEqual({
      bind: "127.0.0.1",
      ssh_session_ttl_secs: 60,
    });
  });

  it("refuses contradictory or incomplete TLS flags as usage errors", () => {
    const usage = (flags: Parameters<typeof resolveStartSettings>[0]): string => {
      try {
        resolveStartSettings(flags, undefined);
      } catch (error) {
        expect((error as OpenShellError).exitCode).toBe(2);
        return (error as OpenShellError).message;
      }
      throw new Error("accepted");
    };
    expect(usage({ tlsCert: "/c" })).toMatch(/--tls-cert and --tls-key go together/);
    expect(usage({ tls: true, tlsCert: "/c", tlsKey: "/k" })).toMatch(/one or the other/);
    expect(usage({ clientCa: "/ca" })).toMatch(/--client-ca needs TLS/);
    expect(usage({ tls: false, clientCa: "/ca" })).toMatch(/--no-tls cannot be combined/);
    expect(usage({ sshSessionTtl: 0 })).toMatch(/--ssh-session-ttl 0: expected a number of seconds from 1/);
    expect(usage({ sshSessionTtl: 400 * 86_400 })).toMatch(/--ssh-session-ttl/);
  });

  it("passes files and the TTL to the gateway process, never the token", () => {
    const args = gatewayProcessArgs("unit", {
      bind: "0.0.0.0",
      tls_cert_file: "/s/server.crt",
      tls_key_file: "/s/server.key",
      client_ca_file: "/c/clients.crt",
      ssh_session_ttl_secs: 90,
    });
    expect(args).toEqual([
      "--bind",
      "0.0.0.0",
      "--tls-cert",
      "/s/server.crt",
      "--tls-key",
      "/s/server.key",
      "--client-ca",
      "/c/clients.crt",
      "--client-ca",
      gatewayTlsFiles("unit").caFile,
      "--ssh-session-ttl",
      "90",
    ]);
  });

  it("takes any spelling of the unspecified address, and only that, as every interface", () => {
    for (const bind of ["0.0.0.0", "::", "::0", "0:0:0:0:0:0:0:0"])
      expect([bind, isWildcardBind(bind)]).toEqual([bind, true]);
    for (const bind of ["", "0", "0.0.0.1", "127.0.0.1", "::1", "[::]", "localhost", "0.0.0.0.example"]) {
      expect([bind, isWildcardBind(bind)]).toEqual([bind, false]);
    }
  });

  it("dials a gateway bound to every interface on loopback, however the bind is spelled (the CLI's old check missed '::0')", () => {
    for (const bind of ["0.0.0.0", "::", "::0", "0:0:0:0:0:0:0:0"]) {
      expect([bind, localMetadata("unit", { bind }, 17670, undefined).gateway_endpoint]).toEqual([
        bind,
        "http://127.0.0.1:17670",
      ]);
    }
    expect(localMetadata("unit", { bind: "192.0.2.1" }, 17670, undefined).gateway_endpoint).toBe(
      "http://192.0.2.1:17670",
    );
    expect(localMetadata("unit", { bind: "::1" }, 17670, undefined).gateway_endpoint).toBe(
      "http://[::1]:17670",
    );
  });

  it("refuses an empty --bind, which no gateway can listen on", () => {
    expect(() => resolveStartSettings({ bind: "", tls: true }, undefined)).toThrow(
      "--bind '': expected an address, e.g. 127.0.0.1 or 0.0.0.0 for every interface",
    );
  });

  it("knows loopback hosts", () => {
    expect(["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"].every(isLoopbackHost)).toBe(true);
    expect(
      ["0.0.0.0", "::", "10.0.0.1", "127.0.0.1.example.test", "localhost.example"].some(isLoopbackHost),
    ).toBe(false);
  });
});

describe("how TLS failures read", () => {
  const target = { name: "gw", endpoint: "https://127.0.0.1:4443" };
  const unavailable = (details: string): ServiceError =>
    Object.assign(new Error(details), { code: status.UNAVAILABLE, details, metadata: new Metadata() });

  it("an untrusted server certificate: the CA is missing", () => {
    const error = mapGrpcError(
      unavailable(
        "No connection established. Last error: Error: unable to verify the first certificate (2026-01-01T00:00:00.000Z). Resolution note: ",
      ),
      target,
    );
    expect(error.message).toBe(
      "TLS: cannot verify the certificate of gateway 'gw' at https://127.0.0.1:4443: it is signed by a CA this CLI does not trust (unable to verify the first certificate)",
    );
    expect(error.hint).toMatch(/--ca ca\.crt/);
  });

  it("a certificate that does not name the host", () => {
    const error = mapGrpcError(
      unavailable(
        "No connection established. Last error: Error [ERR_TLS_CERT_ALTNAME_INVALID]: Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's list: ",
      ),
      target,
    );
    expect(error.message).toMatch(/: it does not name 127\.0\.0\.1 \(/);
  });

  it("a client certificate the gateway requires", () => {
    const error = mapGrpcError(
      unavailable(
        "No connection established. Last error: 809C0F117A7F0000:error:0A00045C:SSL routines:ssl3_read_bytes:tlsv13 alert certificate required:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1601:SSL alert number 116\n (2026-01-01T00:00:00.000Z). Resolution note: ",
      ),
      target,
    );
    expect(error.code).toBe("not_authorized");
    expect(error.message).toBe(
      "gateway 'gw' at https://127.0.0.1:4443 refused the TLS connection: it requires a client certificate (TLS alert: certificate required)",
    );
    expect(error.hint).toMatch(/--client-cert FILE --client-key FILE/);
  });

  it("leaves plaintext gateways' failures alone", () => {
    const error = mapGrpcError(
      unavailable("No connection established. Last error: connect ECONNREFUSED 127.0.0.1:1"),
      { name: "gw", endpoint: "http://127.0.0.1:1" },
    );
    expect(error.code).toBe("gateway_unreachable");
    expect(error.message).toMatch(/^failed to connect to gateway 'gw' at http:\/\/127\.0\.0\.1:1/);
  });
});
