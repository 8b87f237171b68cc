// Certificates for `gateway start --tls`, made with node's own crypto: an
// ECDSA P-256 key pair from generateKeyPairSync, an X.509 v3 certificate
// written here as DER (the few ASN.1 types a certificate needs), signed with
// SHA-256. Node can read certificates (X509Certificate) but not write them,
// and no library is needed for this much.
//
// The gateway's TLS files live in its state directory:
//   $XDG_STATE_HOME/openshell/gateways/<name>/tls/ca.crt      the CA remote CLIs trust (--ca)
//   $XDG_STATE_HOME/openshell/gateways/<name>/tls/ca.key      0600
//   $XDG_STATE_HOME/openshell/gateways/<name>/tls/server.crt  signed by ca.crt
//   $XDG_STATE_HOME/openshell/gateways/<name>/tls/server.key  0600
// The CA is made once and kept (remote CLIs were given it); the server
// certificate is reissued from it when it no longer names every address the
// gateway is reached by, or is about to expire.

import {
  createHash,
  createPrivateKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  sign,
  X509Certificate,
} from "node:crypto";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { hostname, networkInterfaces } from "node:os";
import { join } from "node:path";
import { ensurePrivateDir, gatewayStateDir, writeFileAtomic } from "../core/config.js";

// ---- DER ------------------------------------------------------------------

function derLength(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  const bytes: number[] = [];
  for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), derLength(body.length), body]);
}

const sequence = (...items: Buffer[]): Buffer => tlv(0x30, ...items);
const set = (...items: Buffer[]): Buffer => tlv(0x31, ...items);
const octetString = (content: Buffer): Buffer => tlv(0x04, content);
const utf8String = (text: string): Buffer => tlv(0x0c, Buffer.from(text, "utf8"));
const boolean = (value: boolean): Buffer => tlv(0x01, Buffer.from([value ? 0xff : 0x00]));
/** EXPLICIT [n]: constructed context-specific tag around a whole element. */
const explicit = (n: number, content: Buffer): Buffer => tlv(0xa0 | n, content);
/** IMPLICIT [n] of a primitive type: the content with the tag replaced. */
const implicit = (n: number, content: Buffer): Buffer => tlv(0x80 | n, content);

/** A non-negative INTEGER from big-endian bytes (minimal, with a sign byte when needed). */
function unsignedInteger(bytes: Buffer): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start++;
  const trimmed = bytes.subarray(start);
  return tlv(0x02, (trimmed[0]! & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), trimmed]) : trimmed);
}

function objectIdentifier(dotted: string): Buffer {
  const parts = dotted.split(".").map(Number);
  const bytes: number[] = [40 * parts[0]! + parts[1]!];
  for (const part of parts.slice(2)) {
    const chunk: number[] = [part & 0x7f];
    for (let rest = Math.floor(part / 128); rest > 0; rest = Math.floor(rest / 128)) {
      chunk.unshift(0x80 | (rest & 0x7f));
    }
    bytes.push(...chunk);
  }
  return tlv(0x06, Buffer.from(bytes));
}

function bitString(content: Buffer, unusedBits = 0): Buffer {
  return tlv(0x03, Buffer.from([unusedBits]), content);
}

/** A DER named-bit list (KeyUsage): trailing zero bits dropped, as DER requires. */
function namedBits(bits: number[]): Buffer {
  const last = Math.max(...bits);
  const bytes = Buffer.alloc(Math.floor(last / 8) + 1);
  for (const bit of bits) bytes[Math.floor(bit / 8)]! |= 0x80 >> (bit % 8);
  return bitString(bytes, 7 - (last % 8));
}

/** UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §4.1.2.5). */
function time(date: Date): Buffer {
  const iso = date.toISOString(); // 2025-01-02T03:04:05.678Z
  const digits = iso.slice(0, 19).replace(/[-:T]/g, "");
  return date.getUTCFullYear() < 2050
    ? tlv(0x17, Buffer.from(`${digits.slice(2)}Z`, "ascii"))
    : tlv(0x18, Buffer.from(`${digits}Z`, "ascii"));
}

interface Tlv {
  tag: number;
  /** Offset of the tag byte. */
  start: number;
  /** Offset of the content. */
  content: number;
  /** Offset just past the element. */
  end: number;
}

function readTlv(der: Buffer, offset: number): Tlv {
  const tag = der[offset];
  let lengthByte = der[offset + 1];
  if (tag === undefined || lengthByte === undefined) throw new Error("truncated DER");
  let content = offset + 2;
  let length = lengthByte;
  if (lengthByte & 0x80) {
    const count = lengthByte & 0x7f;
    length = 0;
    for (let i = 0; i < count; i++) {
      lengthByte = der[content + i];
      if (lengthByte === undefined) throw new Error("truncated DER");
      length = length * 256 + lengthByte;
    }
    content += count;
  }
  if (content + length > der.length) throw new Error("truncated DER");
  return { tag, start: offset, content, end: content + length };
}

/** The children of a constructed element. */
function children(der: Buffer, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let offset = parent.content; offset < parent.end; ) {
    const child = readTlv(der, offset);
    out.push(child);
    offset = child.end;
  }
  return out;
}

// ---- certificates -----------------------------------------------------------

const OID = {
  ecdsaWithSha256: "1.2.840.10045.4.3.2",
  commonName: "2.5.4.3",
  organization: "2.5.4.10",
  subjectKeyIdentifier: "2.5.29.14",
  keyUsage: "2.5.29.15",
  subjectAltName: "2.5.29.17",
  basicConstraints: "2.5.29.19",
  authorityKeyIdentifier: "2.5.29.35",
  extKeyUsage: "2.5.29.37",
  serverAuth: "1.3.6.1.5.5.7.3.1",
  clientAuth: "1.3.6.1.5.5.7.3.2",
} as const;

const KEY_USAGE = { digitalSignature: 0, keyCertSign: 5, cRLSign: 6 } as const;
const DAY_MS = 86_400_000;

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

function distinguishedName(commonName: string): Buffer {
  return sequence(
    set(sequence(objectIdentifier(OID.organization), utf8String("openshell"))),
    set(sequence(objectIdentifier(OID.commonName), utf8String(commonName))),
  );
}

function extension(oid: string, critical: boolean, value: Buffer): Buffer {
  return sequence(objectIdentifier(oid), ...(critical ? [boolean(true)] : []), octetString(value));
}

/** RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey bits. */
function keyIdentifier(spki: Buffer): Buffer {
  const [, publicKey] = children(spki, readTlv(spki, 0));
  if (publicKey?.tag !== 0x03) throw new Error("unexpected SubjectPublicKeyInfo");
  return createHash("sha1")
    .update(spki.subarray(publicKey.content + 1, publicKey.end))
    .digest();
}

function ipBytes(address: string): Buffer {
  if (isIP(address) === 4) return Buffer.from(address.split(".").map(Number));
  // IPv6: expand "::" and any embedded IPv4 tail, then 8 groups of 16 bits.
  let text = address;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const b = v4[1]!.split(".").map(Number);
    text = `${text.slice(0, v4.index)}${((b[0]! << 8) | b[1]!).toString(16)}:${((b[2]! << 8) | b[3]!).toString(16)}`;
  }
  const [head, tail] = text.split("::") as [string, string | undefined];
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups =
    tail === undefined
      ? headGroups
      : [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill("0"), ...tailGroups];
  const bytes = Buffer.alloc(16);
  for (const [i, group] of groups.entries()) bytes.writeUInt16BE(Number.parseInt(group, 16), i * 2);
  return bytes;
}

function subjectAltName(hosts: string[]): Buffer {
  return sequence(
    ...hosts.map((host) =>
      isIP(host) ? implicit(7, ipBytes(host)) : implicit(2, Buffer.from(host, "ascii")),
    ),
  );
}

/** The DER subject Name of a certificate (used as the issuer of what it signs). */
function subjectOf(certDer: Buffer): Buffer {
  const tbs = children(certDer, readTlv(certDer, 0))[0];
  if (!tbs) throw new Error("unexpected certificate");
  const fields = children(certDer, tbs);
  // [0] version, serial, signature, issuer, validity, subject
  const offset = fields[0]?.tag === 0xa0 ? 1 : 0;
  const subject = fields[offset + 4];
  if (!subject) throw new Error("unexpected certificate");
  return certDer.subarray(subject.start, subject.end);
}

function pem(label: string, der: Buffer): string {
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/**
 * Makes a key pair and a certificate for it: self-signed when `issuer` is
 * absent (a CA), otherwise signed by the issuer's key.
 */
export function createCertificate(
  request: CertificateRequest,
  issuer?: KeyAndCertificate,
  now = new Date(),
): KeyAndCertificate {
  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const spki = publicKey.export({ type: "spki", format: "der" });
  const subject = distinguishedName(request.commonName);
  let issuerName = subject;
  let issuerKey: KeyObject = privateKey;
  let authorityKeyId = keyIdentifier(spki);
  if (issuer) {
    const issuerCert = new X509Certificate(issuer.cert);
    issuerName = subjectOf(issuerCert.raw);
    issuerKey = createPrivateKey(issuer.key);
    authorityKeyId = keyIdentifier(issuerCert.publicKey.export({ type: "spki", format: "der" }));
  }

  const extensions: Buffer[] = [];
  if (request.usage === "ca") {
    extensions.push(
      extension(OID.basicConstraints, true, sequence(boolean(true), unsignedInteger(Buffer.from([0])))),
      extension(
        OID.keyUsage,
        true,
        namedBits([KEY_USAGE.digitalSignature, KEY_USAGE.keyCertSign, KEY_USAGE.cRLSign]),
      ),
    );
  } else {
    extensions.push(
      extension(OID.basicConstraints, true, sequence()),
      extension(OID.keyUsage, true, namedBits([KEY_USAGE.digitalSignature])),
      extension(
        OID.extKeyUsage,
        false,
        sequence(objectIdentifier(request.usage === "server" ? OID.serverAuth : OID.clientAuth)),
      ),
    );
  }
  if (request.hosts && request.hosts.length > 0) {
    extensions.push(extension(OID.subjectAltName, false, subjectAltName(request.hosts)));
  }
  extensions.push(
    extension(OID.subjectKeyIdentifier, false, octetString(keyIdentifier(spki))),
    extension(OID.authorityKeyIdentifier, false, sequence(implicit(0, authorityKeyId))),
  );

  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01; // positive and exactly 16 bytes
  const algorithm = sequence(objectIdentifier(OID.ecdsaWithSha256));
  const tbs = sequence(
    explicit(0, unsignedInteger(Buffer.from([2]))), // v3
    unsignedInteger(serial),
    algorithm,
    issuerName,
    // An hour of slack for clocks a little behind ours.
    sequence(
      time(new Date(now.getTime() - 3600_000)),
      time(new Date(now.getTime() + request.validityDays * DAY_MS)),
    ),
    subject,
    spki,
    explicit(3, sequence(...extensions)),
  );
  const signature = sign("sha256", tbs, { key: issuerKey, dsaEncoding: "der" });
  const der = sequence(tbs, algorithm, bitString(signature));
  return {
    cert: pem("CERTIFICATE", der),
    key: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
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

function isWildcard(bind: string): boolean {
  return bind === "0.0.0.0" || bind === "::" || bind === "";
}

/**
 * The names a gateway bound to `bind` is reached by: loopback always, the
 * bind address, and for a wildcard bind this machine's name and addresses.
 */
export function serverHosts(bind: string): string[] {
  const hosts = ["localhost", "127.0.0.1", "::1"];
  if (!isWildcard(bind)) hosts.push(bind);
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

function readIfPresent(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

/** A CA pair that can still sign, or undefined. */
function usableCa(files: GatewayTlsFiles, now: Date): KeyAndCertificate | undefined {
  const cert = readIfPresent(files.caFile);
  const key = readIfPresent(files.caKeyFile);
  if (!cert || !key) return undefined;
  try {
    const x509 = new X509Certificate(cert);
    if (!x509.ca || !x509.checkPrivateKey(createPrivateKey(key))) return undefined;
    if (new Date(x509.validTo).getTime() - now.getTime() < (SERVER_VALIDITY_DAYS + 1) * DAY_MS) {
      return undefined;
    }
    return { cert, key };
  } catch {
    return undefined;
  }
}

function usableLeaf(
  certFile: string,
  keyFile: string,
  ca: KeyAndCertificate,
  hosts: string[],
  now: Date,
): boolean {
  const cert = readIfPresent(certFile);
  const key = readIfPresent(keyFile);
  if (!cert || !key) return false;
  try {
    const x509 = new X509Certificate(cert);
    const caCert = new X509Certificate(ca.cert);
    return (
      x509.checkIssued(caCert) &&
      x509.verify(caCert.publicKey) &&
      x509.checkPrivateKey(createPrivateKey(key)) &&
      new Date(x509.validTo).getTime() - now.getTime() > RENEW_BEFORE_DAYS * DAY_MS &&
      hosts.every((host) => certificateNames(x509, host))
    );
  } catch {
    return false;
  }
}

/** The gateway's CA, made once and kept while it has a server certificate's lifetime left. */
function ensureCa(
  name: string,
  files: GatewayTlsFiles,
  now: Date,
): { ca: KeyAndCertificate; newCa: boolean } {
  ensurePrivateDir(files.dir);
  const existing = usableCa(files, now);
  if (existing) return { ca: existing, newCa: false };
  const ca = createCertificate(
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
export function ensureGatewayTls(name: string, bind: string, now = new Date()): EnsuredTls {
  const files = gatewayTlsFiles(name);
  const hosts = serverHosts(bind);
  const { ca, newCa } = ensureCa(name, files, now);
  let newServerCert = false;
  if (newCa || !usableLeaf(files.certFile, files.keyFile, ca, hosts, now)) {
    const server = createCertificate(
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
export function ensureOwnerClientCertificate(name: string, now = new Date()): GatewayTlsFiles {
  const files = gatewayTlsFiles(name);
  const { ca, newCa } = ensureCa(name, files, now);
  if (newCa || !usableLeaf(files.clientCertFile, files.clientKeyFile, ca, [], now)) {
    const client = createCertificate(
      { commonName: `openshell gateway ${name} owner`, usage: "client", validityDays: SERVER_VALIDITY_DAYS },
      ca,
      now,
    );
    writeFileAtomic(files.clientKeyFile, client.key, 0o600);
    writeFileAtomic(files.clientCertFile, client.cert, 0o644);
  }
  return files;
}
