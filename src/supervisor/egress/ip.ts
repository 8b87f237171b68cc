// IP addresses and CIDR ranges as the egress proxy judges them: which
// addresses no policy may open (loopback, link-local, unspecified), which are
// internal (private, shared, documentation ranges; upstream's list) and so need
// an explicit grant, and whether an address lies in an `allowed_ips` entry.
//
// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is judged as the IPv4
// address it carries, so the mapped form cannot slip past a v4 rule.

import { isIP } from "node:net";

export interface IpAddress {
  family: 4 | 6;
  /** The address as a 32- or 128-bit number. */
  value: bigint;
}

export interface Cidr {
  family: 4 | 6;
  /** The network address (host bits cleared). */
  base: bigint;
  prefix: number;
}

const BITS = { 4: 32, 6: 128 } as const;

/** The address, or undefined when `text` is not an IP literal (brackets and a zone id are accepted). */
export function parseIp(text: string): IpAddress | undefined {
  let t = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
  const zone = t.indexOf("%");
  if (zone >= 0) t = t.slice(0, zone);
  const family = isIP(t);
  if (family === 4) return { family: 4, value: parseV4(t) };
  if (family === 6) return { family: 6, value: parseV6(t) };
  return undefined;
}

function parseV4(t: string): bigint {
  return t.split(".").reduce((acc, octet) => (acc << 8n) | BigInt(Number(octet)), 0n);
}

function parseV6(t: string): bigint {
  // An embedded dotted quad stands for the last two groups.
  const lastColon = t.lastIndexOf(":");
  let text = t;
  if (t.includes(".", lastColon)) {
    const v4 = parseV4(t.slice(lastColon + 1));
    text = `${t.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [head = "", tail] = text.split("::") as [string, string | undefined];
  const groups = (part: string) => (part === "" ? [] : part.split(":"));
  const left = groups(head);
  const right = tail === undefined ? [] : groups(tail);
  const zeros = tail === undefined ? [] : Array<string>(8 - left.length - right.length).fill("0");
  return [...left, ...zeros, ...right].reduce((acc, group) => (acc << 16n) | BigInt(`0x${group}`), 0n);
}

/** The IPv4 address an IPv4-mapped IPv6 address carries; any other address unchanged. */
export function unmapped(ip: IpAddress): IpAddress {
  if (ip.family === 6 && ip.value >> 32n === 0xffffn) return { family: 4, value: ip.value & 0xffffffffn };
  return ip;
}

export function formatIp(ip: IpAddress): string {
  if (ip.family === 4) {
    return [24n, 16n, 8n, 0n].map((shift) => ((ip.value >> shift) & 0xffn).toString()).join(".");
  }
  if (ip.value >> 32n === 0xffffn) return `::ffff:${formatIp({ family: 4, value: ip.value & 0xffffffffn })}`;
  const groups = Array.from({ length: 8 }, (_, i) => Number((ip.value >> BigInt(112 - 16 * i)) & 0xffffn));
  // RFC 5952: the longest run of two or more zero groups becomes `::`.
  let best = { start: -1, length: 1 };
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.length) best = { start: i, length: j - i };
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best.start < 0) return hex.join(":");
  return `${hex.slice(0, best.start).join(":")}::${hex.slice(best.start + best.length).join(":")}`;
}

/** `10.0.5.0/24`, `fd00::/8`, or a bare address (a single-address range); undefined when malformed. */
export function parseCidr(text: string): Cidr | undefined {
  const slash = text.indexOf("/");
  const ip = parseIp(slash < 0 ? text.trim() : text.slice(0, slash).trim());
  if (ip === undefined) return undefined;
  const bits: number = BITS[ip.family];
  let prefix = bits;
  if (slash >= 0) {
    const prefixText = text.slice(slash + 1).trim();
    if (!/^[0-9]{1,3}$/.test(prefixText)) return undefined;
    prefix = Number(prefixText);
    if (prefix > bits) return undefined;
  }
  return { family: ip.family, base: mask(ip.value, bits, prefix), prefix };
}

function mask(value: bigint, bits: number, prefix: number): bigint {
  const hostBits = BigInt(bits - prefix);
  return (value >> hostBits) << hostBits;
}

export function cidrContains(cidr: Cidr, address: IpAddress): boolean {
  // Compare like with like: a v4 range holds a mapped v6 address, a mapped v6 range a v4 one.
  const range = cidrUnmapped(cidr);
  const ip = unmapped(address);
  if (range.family !== ip.family) return false;
  return mask(ip.value, BITS[ip.family], range.prefix) === range.base;
}

function cidrUnmapped(cidr: Cidr): Cidr {
  if (cidr.family === 6 && cidr.prefix >= 96 && cidr.base >> 32n === 0xffffn) {
    return { family: 4, base: cidr.base & 0xffffffffn, prefix: cidr.prefix - 96 };
  }
  return cidr;
}

function ranges(list: string[]): Cidr[] {
  return list.map((text) => parseCidr(text)!);
}

/** Never reachable from a sandbox: loopback (the proxy's own host), link-local (cloud metadata), unspecified. */
const ALWAYS_BLOCKED = ranges([
  "127.0.0.0/8",
  "169.254.0.0/16",
  "0.0.0.0/32",
  "::1/128",
  "::/128",
  "fe80::/10",
]);

/** Reachable only when a policy grants the address explicitly (upstream's internal ranges). */
const INTERNAL = ranges([
  "0.0.0.0/8",
  "10.0.0.0/8",
  "100.64.0.0/10",
  "172.16.0.0/12",
  "192.0.0.0/24",
  "192.0.2.0/24",
  "192.168.0.0/16",
  "198.18.0.0/15",
  "198.51.100.0/24",
  "203.0.113.0/24",
  "255.255.255.255/32",
  "fc00::/7",
]);

export function isAlwaysBlocked(ip: IpAddress): boolean {
  return ALWAYS_BLOCKED.some((range) => cidrContains(range, ip));
}

export function isInternal(ip: IpAddress): boolean {
  return isAlwaysBlocked(ip) || INTERNAL.some((range) => cidrContains(range, ip));
}

/** Whether a range includes any always-blocked address (such an `allowed_ips` entry is refused). */
export function overlapsAlwaysBlocked(cidr: Cidr): boolean {
  const range = cidrUnmapped(cidr);
  return ALWAYS_BLOCKED.some((blocked) => {
    const other = cidrUnmapped(blocked);
    if (other.family !== range.family) return false;
    const prefix = Math.min(other.prefix, range.prefix);
    const bits = BITS[range.family];
    return mask(other.base, bits, prefix) === mask(range.base, bits, prefix);
  });
}
