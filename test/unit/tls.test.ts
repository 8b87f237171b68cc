// Certificates made by src/gateway/tls.ts, read back with node's own
// X509Certificate and used for real TLS handshakes.

import { createPrivateKey, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect, createServer, type TLSSocket } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  CA_VALIDITY_DAYS,
  createCertificate,
  ensureGatewayTls,
  ensureOwnerClientCertificate,
  gatewayTlsFiles,
  type KeyAndCertificate,
  SERVER_VALIDITY_DAYS,
  serverHosts,
} from "../../src/gateway/tls.js";

const DAY_MS = 86_400_000;

describe("createCertificate", async () => {
  const ca = await createCertificate({ commonName: "unit CA", usage: "ca", validityDays: CA_VALIDITY_DAYS });
  const server = await createCertificate(
    {
      commonName: "unit server",
      hosts: ["localhost", "127.0.0.1", "::1", "10.1.2.3", "gw.example.test"],
      usage: "server",
      validityDays: SERVER_VALIDITY_DAYS,
    },
    ca,
  );
  const client = await createCertificate(
    { commonName: "unit client", usage: "client", validityDays: 30 },
    ca,
  );
  const caCert = new X509Certificate(ca.cert);
  const serverCert = new X509Certificate(server.cert);
  const clientCert = new X509Certificate(client.cert);

  it("makes a self-signed CA that node reads as a CA", () => {
    expect(caCert.ca).toBe(true);
    expect(caCert.subject).toBe("O=openshell\nCN=unit CA");
    expect(caCert.issuer).toBe(caCert.subject);
    expect(caCert.checkIssued(caCert)).toBe(true);
    expect(caCert.verify(caCert.publicKey)).toBe(true);
    expect(caCert.publicKey.asymmetricKeyType).toBe("ec");
    expect(caCert.publicKey.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
    expect(caCert.checkPrivateKey(createPrivateKey(ca.key))).toBe(true);
  });

  it("signs a server certificate that chains to the CA and names every host", async () => {
    expect(serverCert.ca).toBe(false);
    expect(serverCert.issuer).toBe(caCert.subject);
    expect(serverCert.checkIssued(caCert)).toBe(true);
    expect(serverCert.verify(caCert.publicKey)).toBe(true);
    // Not signed by anyone else.
    const stranger = new X509Certificate(
      (await createCertificate({ commonName: "other", usage: "ca", validityDays: 1 })).cert,
    );
    expect(serverCert.verify(stranger.publicKey)).toBe(false);
    expect(serverCert.checkIssued(stranger)).toBe(false);
    expect(serverCert.checkPrivateKey(createPrivateKey(server.key))).toBe(true);
    expect(serverCert.checkPrivateKey(createPrivateKey(ca.key))).toBe(false);
    expect(serverCert.subjectAltName).toBe(
      "DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:10.1.2.3, DNS:gw.example.test",
    );
    expect(serverCert.checkIP("127.0.0.1")).toBe("127.0.0.1");
    expect(serverCert.checkIP("::1")).toBe("::1");
    expect(serverCert.checkIP("10.1.2.4")).toBeUndefined();
    expect(serverCert.checkHost("gw.example.test")).toBe("gw.example.test");
    expect(serverCert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.1"]);
    expect(clientCert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.2"]);
  });

  it("is valid from an hour ago for the days asked, with a fresh positive 128-bit serial", () => {
    const from = new Date(serverCert.validFrom).getTime();
    const to = new Date(serverCert.validTo).getTime();
    expect(Math.abs(from - (Date.now() - 3600_000))).toBeLessThan(5_000);
    expect(Math.abs(to - from - SERVER_VALIDITY_DAYS * DAY_MS - 3600_000)).toBeLessThan(5_000);
    expect(serverCert.serialNumber).toMatch(/^[0-7][0-9A-F]{31}$/);
    expect(clientCert.serialNumber).not.toBe(serverCert.serialNumber);
  });

  it("names an IPv6 address with an IPv4 tail by all 16 bytes, and a zoned address without its zone", async () => {
    const made = await createCertificate(
      {
        commonName: "v6",
        hosts: ["::ffff:192.0.2.1", "2001:db8::1.2.3.4", "fe80::7%lo"],
        usage: "server",
        validityDays: 1,
      },
      ca,
    );
    const cert = new X509Certificate(made.cert);
    expect(cert.subjectAltName).toBe(
      "IP Address:0:0:0:0:0:FFFF:C000:201, IP Address:2001:DB8:0:0:0:0:102:304, IP Address:FE80:0:0:0:0:0:0:7",
    );
    expect(cert.checkIP("::ffff:192.0.2.1")).toBe("::ffff:192.0.2.1");
    expect(cert.checkIP("2001:db8::102:304")).toBe("2001:db8::102:304");
    expect(cert.checkIP("::ffff:0.0.0.1")).toBeUndefined();
  });

  it("writes GeneralizedTime for dates from 2050 on", async () => {
    const late = await createCertificate(
      { commonName: "late", usage: "ca", validityDays: 30 },
      undefined,
      new Date("2060-03-04T05:06:07Z"),
    );
    const cert = new X509Certificate(late.cert);
    expect(new Date(cert.validFrom).toISOString()).toBe("2060-03-04T04:06:07.000Z");
    expect(new Date(cert.validTo).toISOString()).toBe("2060-04-03T05:06:07.000Z");
  });

  describe("in a real TLS handshake", () => {
    let port = 0;
    const server$ = createServer(
      { cert: server.cert, key: server.key, ca: ca.cert, requestCert: true, rejectUnauthorized: false },
      (socket) => socket.end(`hello ${socket.authorized ? "authorized" : "anonymous"}\n`),
    );
    beforeAll(async () => {
      await new Promise<void>((resolve) => server$.listen(0, "127.0.0.1", resolve));
      port = (server$.address() as AddressInfo).port;
    });
    afterAll(() => new Promise<void>((resolve) => server$.close(() => resolve())));

    /** Node's own checks: the chain to `ca`, and that the certificate names 127.0.0.1. */
    function dial(options: { ca?: string; identity?: KeyAndCertificate }): Promise<string> {
      return new Promise((resolve, reject) => {
        const socket: TLSSocket = connect({
          host: "127.0.0.1",
          port,
          ...(options.ca ? { ca: options.ca } : {}),
          ...(options.identity ? { cert: options.identity.cert, key: options.identity.key } : {}),
        });
        let text = "";
        socket.on("data", (data: Buffer) => {
          text += data.toString();
        });
        socket.on("end", () => resolve(text));
        socket.on("error", reject);
      });
    }

    it("is trusted by a client that has the CA, and not by one that lacks it", async () => {
      await expect(dial({ ca: ca.cert })).resolves.toBe("hello anonymous\n");
      await expect(dial({})).rejects.toThrow(/unable to verify the first certificate|self[- ]signed/);
    });

    it("authenticates a client certificate the CA signed", async () => {
      await expect(dial({ ca: ca.cert, identity: client })).resolves.toBe("hello authorized\n");
    });
  });
});

describe("the gateway's TLS files", () => {
  const root = mkdtempSync(join(tmpdir(), "openshell-tls-unit-"));
  const saved = process.env.XDG_STATE_HOME;
  beforeAll(() => {
    process.env.XDG_STATE_HOME = root;
  });
  afterAll(() => {
    if (saved === undefined) delete process.env.XDG_STATE_HOME;
    else process.env.XDG_STATE_HOME = saved;
    rmSync(root, { recursive: true, force: true });
  });

  it("makes ca.crt, ca.key, server.crt and server.key, keys 0600 in a 0700 directory", async () => {
    const made = await ensureGatewayTls("unit", "127.0.0.1");
    expect(made.dir).toBe(join(root, "openshell", "gateways", "unit", "tls"));
    expect([made.newCa, made.newServerCert]).toEqual([true, true]);
    expect(statSync(made.dir).mode & 0o777).toBe(0o700);
    expect(statSync(made.caKeyFile).mode & 0o777).toBe(0o600);
    expect(statSync(made.keyFile).mode & 0o777).toBe(0o600);
    const ca = new X509Certificate(readFileSync(made.caFile));
    const server = new X509Certificate(readFileSync(made.certFile));
    expect(server.verify(ca.publicKey)).toBe(true);
    expect(server.checkPrivateKey(createPrivateKey(readFileSync(made.keyFile)))).toBe(true);
    expect(ca.checkPrivateKey(createPrivateKey(readFileSync(made.caKeyFile)))).toBe(true);
    for (const host of ["localhost", "127.0.0.1", "::1"]) expect(made.hosts).toContain(host);
  });

  it("reuses them on a later start", async () => {
    const files = gatewayTlsFiles("unit");
    const before = [readFileSync(files.caFile, "utf8"), readFileSync(files.certFile, "utf8")];
    const again = await ensureGatewayTls("unit", "127.0.0.1");
    expect([again.newCa, again.newServerCert]).toEqual([false, false]);
    expect([readFileSync(files.caFile, "utf8"), readFileSync(files.certFile, "utf8")]).toEqual(before);
  });

  it("reissues the server certificate from the same CA for a new address, and before it expires", async () => {
    const files = gatewayTlsFiles("unit");
    const ca = readFileSync(files.caFile, "utf8");
    const moved = await ensureGatewayTls("unit", "10.9.8.7");
    expect([moved.newCa, moved.newServerCert]).toEqual([false, true]);
    expect(readFileSync(files.caFile, "utf8")).toBe(ca);
    expect(new X509Certificate(readFileSync(files.certFile)).checkIP("10.9.8.7")).toBe("10.9.8.7");

    const later = new Date(Date.now() + (SERVER_VALIDITY_DAYS - 10) * DAY_MS);
    const renewed = await ensureGatewayTls("unit", "10.9.8.7", later);
    expect([renewed.newCa, renewed.newServerCert]).toEqual([false, true]);
    expect(readFileSync(files.caFile, "utf8")).toBe(ca);
  });

  it("makes a new CA when the old one cannot sign any more", async () => {
    const files = gatewayTlsFiles("unit");
    writeFileSync(files.caKeyFile, "not a key");
    const remade = await ensureGatewayTls("unit", "127.0.0.1");
    expect([remade.newCa, remade.newServerCert]).toEqual([true, true]);
    const ca = new X509Certificate(readFileSync(files.caFile));
    expect(new X509Certificate(readFileSync(files.certFile)).verify(ca.publicKey)).toBe(true);
  });

  it("gives the owner a client certificate from the gateway's CA (for --client-ca gateways)", async () => {
    const files = await ensureOwnerClientCertificate("unit");
    const ca = new X509Certificate(readFileSync(files.caFile));
    const cert = new X509Certificate(readFileSync(files.clientCertFile));
    expect(cert.verify(ca.publicKey)).toBe(true);
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.2"]);
    expect(statSync(files.clientKeyFile).mode & 0o777).toBe(0o600);
    const first = readFileSync(files.clientCertFile, "utf8");
    await ensureOwnerClientCertificate("unit");
    expect(readFileSync(files.clientCertFile, "utf8")).toBe(first);
  });

  it("names loopback always, and this machine's addresses for a wildcard bind", () => {
    expect(serverHosts("192.0.2.10")).toEqual(["localhost", "127.0.0.1", "::1", "192.0.2.10"]);
    const wildcard = serverHosts("0.0.0.0");
    expect(wildcard.slice(0, 3)).toEqual(["localhost", "127.0.0.1", "::1"]);
    expect(wildcard).not.toContain("0.0.0.0");
    // The gateway's old check missed other spellings of the unspecified address.
    for (const bind of ["::", "::0", "0:0:0:0:0:0:0:0"]) {
      const hosts = serverHosts(bind);
      expect(hosts).not.toContain(bind);
      expect(hosts).toEqual(wildcard);
    }
  });
});
