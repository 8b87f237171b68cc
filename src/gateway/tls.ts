// Certificates for `gateway start --tls`: an ECDSA P-256 key pair and an
// X.509 v3 certificate signed with SHA-256, encoded by @peculiar/x509 over
// node's WebCrypto. A certificate is parsed by every client that dials the
// gateway and its encoder is easy to get subtly wrong (lengths, bit strings,
// time formats, IP bytes), so the encoding is left to a maintained library;
// node's X509Certificate reads certificates back (issuer, names, validity).
//
// The library is loaded only when a certificate is made, so commands that
// merely name the TLS files do not pay for it at start-up. It needs the Reflect
// metadata API (its dependency container reads it at import), loaded just
// before it.
//
// The gateway's TLS files live in its state directory:
//   $XDG_STATE_HOME/openshell/gateways/<name>/tls/ca.crt      the CA remote CLIs trust (--ca)
//   $XDG_STATE_HOME/openshell/gateways/<name>/tls/ca.key      0600
//   $XDG_STATE_HOME/openshell/gateways/<name>/tls/server.crt  signed by ca.crt
//   $XDG_STATE_HOME/openshell/gateways/<name>/tls/server.key  0600
// The CA is made once and kept (remote CLIs were given it); the server
// certificate is reissued from it when it no longer names every address the
// gateway is reached by, or is about to expire.

import { createPrivateKey, KeyObject, randomBytes, webcrypto, X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import { hostname, networkInterfaces } from "node:os";
import { join } from "node:path";
import type * as X509 from "@peculiar/x509";
import { ensurePrivateDir, gatewayStateDir, isWildcardBind, writeFileAtomic } from "../host/config.js";
import { orElse, readTextIfExists } from "../host/fs.js";

const DAY_MS = 86_400_000;
const EC_P256 = { name: "ECDSA", namedCurve: "P-256", hash: "SHA-256" } as const;

export interface KeyAndCertificate {
  /** PEM certificate. */
  cert: string;
  /** PEM private key (PKCS#8). */
  key: string;
}

export interface CertificateRequest {
  commonName: string;
  /** DNS names and IP addresses the certificate is valid for (SubjectAltName). */
  hosts?: string[];
  /** What the certificate is for: a CA, a TLS server, or a TLS client (mTLS). */
  usage: "ca" | "server" | "client";
  validityDays: number;
}

async function x509Library(): Promise<typeof X509.default> {
  await import("reflect-metadata/lite");
  // The CommonJS build's exports object, the default export both under node and bundled.
  const { default: x509 } = await import("@peculiar/x509");
  x509.cryptoProvider.set(webcrypto);
  return x509;
}

/**
 * An IP address as the library's SAN encoder reads it: without a zone, and
 * with an embedded IPv4 tail (::ffff:1.2.3.4) in hex, which the encoder
 * would otherwise misread. The URL parser does the rewriting.
 */
function canonicalIp(address: string): string {
  const bare = address.replace(/%.*$/, "");
  return isIP(bare) === 6 ? new URL(`http://[${bare}]`).hostname.slice(1, -1) : bare;
}

/**
 * Makes a key pair and a certificate for it: self-signed when `issuer` is
 * absent (a CA), otherwise signed by the issuer's key.
 */
export async function createCertificate(
  request: CertificateRequest,
  issuer?: KeyAndCertificate,
  now = new Date(),
): Promise<KeyAndCertificate> {
  const x509 = await x509Library();
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]);
  const flags = x509.KeyUsageFlags;
  const extensions: X509.Extension[] =
    request.usage === "ca"
      ? [
          new x509.BasicConstraintsExtension(true, 0, true),
          new x509.KeyUsagesExtension(flags.digitalSignature | flags.keyCertSign | flags.cRLSign, true),
        ]
      : [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(flags.digitalSignature, true),
          new x509.ExtendedKeyUsageExtension(
            [
              request.usage === "server"
                ? x509.ExtendedKeyUsage.serverAuth
                : x509.ExtendedKeyUsage.clientAuth,
            ],
            false,
          ),
        ];
  if (request.hosts && request.hosts.length > 0) {
    const names = request.hosts.map(
      (host): X509.JsonGeneralName =>
        isIP(host) ? { type: "ip", value: canonicalIp(host) } : { type: "dns", value: host },
    );
    extensions.push(new x509.SubjectAlternativeNameExtension(names, false));
  }
  extensions.push(await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false));

  let issuerName: X509.Name | undefined;
  let signingKey = keys.privateKey;
  if (issuer) {
    const issuerCert = new x509.X509Certificate(issuer.cert);
    issuerName = issuerCert.subjectName;
    extensions.push(await x509.AuthorityKeyIdentifierExtension.create(issuerCert, false));
    const der = createPrivateKey(issuer.key).export({ type: "pkcs8", format: "der" });
    signingKey = await webcrypto.subtle.importKey("pkcs8", der, EC_P256, false, ["sign"]);
  } else {
    extensions.push(await x509.AuthorityKeyIdentifierExtension.create(keys.publicKey, false));
  }

  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01; // positive and exactly 16 bytes
  const subject = new x509.Name([
    { O: [{ utf8String: "openshell" }] },
    { CN: [{ utf8String: request.commonName }] },
  ]);
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial.toString("hex"),
    subject,
    issuer: issuerName ?? subject,
    // An hour of slack for clocks a little behind ours.
    notBefore: new Date(now.getTime() - 3600_000),
    notAfter: new Date(now.getTime() + request.validityDays * DAY_MS),
    signingAlgorithm: EC_P256,
    publicKey: keys.publicKey,
    signingKey,
    extensions,
  });
  return {
    cert: `${cert.toString("pem")}\n`,
    key: KeyObject.from(keys.privateKey).export({ type: "pkcs8", format: "pem" }).toString(),
  };
}

// ---- the gateway's TLS files ------------------------------------------------

export const CA_VALIDITY_DAYS = 3650;
export const SERVER_VALIDITY_DAYS = 397;
/** Reissue the server certificate when it has less than this left. */
const RENEW_BEFORE_DAYS = 30;

export interface GatewayTlsFiles {
  dir: string;
  caFile: string;
  caKeyFile: string;
  certFile: string;
  keyFile: string;
  /** The owner's own client certificate, for a gateway that requires them (mTLS). */
  clientCertFile: string;
  clientKeyFile: string;
}

export function gatewayTlsFiles(name: string): GatewayTlsFiles {
  const dir = join(gatewayStateDir(name), "tls");
  return {
    dir,
    caFile: join(dir, "ca.crt"),
    caKeyFile: join(dir, "ca.key"),
    certFile: join(dir, "server.crt"),
    keyFile: join(dir, "server.key"),
    clientCertFile: join(dir, "client.crt"),
    clientKeyFile: join(dir, "client.key"),
  };
}

/**
 * The names a gateway bound to `bind` is reached by: loopback always, the
 * bind address, and for a wildcard bind this machine's name and addresses.
 */
export function serverHosts(bind: string): string[] {
  const hosts = ["localhost", "127.0.0.1", "::1"];
  if (!isWildcardBind(bind)) hosts.push(bind);
  else {
    const name = hostname();
    if (/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(name)) hosts.push(name);
    for (const addresses of Object.values(networkInterfaces())) {
      for (const address of addresses ?? []) {
        if (!address.internal && !address.address.startsWith("fe80:")) hosts.push(address.address);
      }
    }
  }
  return [...new Set(hosts)];
}

/** Whether the certificate names `host` (an IP address or a DNS name). */
export function certificateNames(cert: X509Certificate, host: string): boolean {
  return isIP(host) ? cert.checkIP(host) !== undefined : cert.checkHost(host) !== undefined;
}

/** A CA pair that can still sign, or undefined. */
function usableCa(files: GatewayTlsFiles, now: Date): KeyAndCertificate | undefined {
  const cert = readTextIfExists(files.caFile);
  const key = readTextIfExists(files.caKeyFile);
  if (!cert || !key) return undefined;
  // A file that does not parse is no usable CA either.
  return orElse(undefined, () => {
    const x509 = new X509Certificate(cert);
    if (!x509.ca || !x509.checkPrivateKey(createPrivateKey(key))) return undefined;
    if (new Date(x509.validTo).getTime() - now.getTime() < (SERVER_VALIDITY_DAYS + 1) * DAY_MS) {
      return undefined;
    }
    return { cert, key };
  });
}

function usableLeaf(
  certFile: string,
  keyFile: string,
  ca: KeyAndCertificate,
  hosts: string[],
  now: Date,
): boolean {
  const cert = readTextIfExists(certFile);
  const key = readTextIfExists(keyFile);
  if (!cert || !key) return false;
  return orElse(false, () => {
    const x509 = new X509Certificate(cert);
    const caCert = new X509Certificate(ca.cert);
    return (
      x509.checkIssued(caCert) &&
      x509.verify(caCert.publicKey) &&
      x509.checkPrivateKey(createPrivateKey(key)) &&
      new Date(x509.validTo).getTime() - now.getTime() > RENEW_BEFORE_DAYS * DAY_MS &&
      hosts.every((host) => certificateNames(x509, host))
    );
  });
}

/** The gateway's CA, made once and kept while it has a server certificate's lifetime left. */
async function ensureCa(
  name: string,
  files: GatewayTlsFiles,
  now: Date,
): Promise<{ ca: KeyAndCertificate; newCa: boolean }> {
  ensurePrivateDir(files.dir);
  const existing = usableCa(files, now);
  if (existing) return { ca: existing, newCa: false };
  const ca = await createCertificate(
    { commonName: `openshell gateway ${name} CA`, usage: "ca", validityDays: CA_VALIDITY_DAYS },
    undefined,
    now,
  );
  writeFileAtomic(files.caKeyFile, ca.key, 0o600);
  writeFileAtomic(files.caFile, ca.cert, 0o644);
  return { ca, newCa: true };
}

export interface EnsuredTls extends GatewayTlsFiles {
  /** True when a new CA was made (remote CLIs need the new ca.crt). */
  newCa: boolean;
  /** True when a new server certificate was issued. */
  newServerCert: boolean;
  hosts: string[];
}

/**
 * Makes (or reuses) the gateway's CA and a server certificate naming every
 * address of `bind`. Keys are written 0600 in a 0700 directory.
 */
export async function ensureGatewayTls(name: string, bind: string, now = new Date()): Promise<EnsuredTls> {
  const files = gatewayTlsFiles(name);
  const hosts = serverHosts(bind);
  const { ca, newCa } = await ensureCa(name, files, now);
  let newServerCert = false;
  if (newCa || !usableLeaf(files.certFile, files.keyFile, ca, hosts, now)) {
    const server = await createCertificate(
      { commonName: `openshell gateway ${name}`, hosts, usage: "server", validityDays: SERVER_VALIDITY_DAYS },
      ca,
      now,
    );
    writeFileAtomic(files.keyFile, server.key, 0o600);
    writeFileAtomic(files.certFile, server.cert, 0o644);
    newServerCert = true;
  }
  return { ...files, newCa, newServerCert, hosts };
}

/**
 * A gateway that requires client certificates (--client-ca) must still let
 * its owner's CLI in: it also accepts client certificates from its own CA
 * (whose key only its owner can read), and the owner's CLI gets one.
 */
export async function ensureOwnerClientCertificate(name: string, now = new Date()): Promise<GatewayTlsFiles> {
  const files = gatewayTlsFiles(name);
  const { ca, newCa } = await ensureCa(name, files, now);
  if (newCa || !usableLeaf(files.clientCertFile, files.clientKeyFile, ca, [], now)) {
    const client = await createCertificate(
      { commonName: `openshell gateway ${name} owner`, usage: "client", validityDays: SERVER_VALIDITY_DAYS },
      ca,
      now,
    );
    writeFileAtomic(files.clientKeyFile, client.key, 0o600);
    writeFileAtomic(files.clientCertFile, client.cert, 0o644);
  }
  return files;
}
