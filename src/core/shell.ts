// POSIX shell quoting for strings that end up in a remote `sh -c` or an
// OpenSSH ProxyCommand. Safe characters stay bare so commands read naturally.

const SAFE = /^[A-Za-z0-9./_-]+$/;

export function shellEscape(arg: string): string {
  if (arg.includes("\0")) throw new Error("argument contains a NUL byte");
  if (arg === "") return "''";
  if (SAFE.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'"'"'`)}'`;
}

export function shellJoin(args: readonly string[]): string {
  return args.map(shellEscape).join(" ");
}
