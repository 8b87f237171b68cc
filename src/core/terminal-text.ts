// Text a sandbox controls (tar entry names, condition reasons, log lines, the
// stderr of its commands) is shown on the user's terminal. Written raw, it is
// a channel into that terminal: `ESC ] 0 ; title BEL` sets the window title,
// `ESC [ 2 J` clears the screen, a carriage return or a cursor move overwrites
// the line before it with fake text, a C1 `CSI` (0x9b) does what `ESC [` does
// on terminals that honour 8-bit controls, and a bidi override (U+202E) makes
// `exe.txt` read as `txt.exe`. Some terminals have even answered queries by
// typing into the shell.
//
// So every such string goes through escapeForTerminal before it reaches a
// terminal: each of those characters is replaced by a visible escape (`\x1b`,
// `\x9b`, `\u202e`, `\n`), so the user sees what the sandbox sent and the
// terminal acts on none of it. Printable text, tabs excepted, is unchanged
// (any script, emoji joined with ZWJ included). The escape is for reading, not
// for parsing back: a backslash stays a backslash. Machine output (`-o json`,
// JSON.stringify) needs none of this, and `logs --raw` prints the bytes as
// they are because the user asked for exactly that.

const NAMED: Record<string, string> = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

// C0 controls, DEL and C1 controls; the bidi embeddings, overrides, isolates
// and marks; the line and paragraph separators some terminals break lines on;
// and lone surrogates (what invalid UTF-16 decodes to), which would reach the
// terminal as U+FFFD and hide what was there.
const UNSAFE =
  /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

function escapeChar(char: string): string {
  const named = NAMED[char];
  if (named !== undefined) return named;
  const code = char.charCodeAt(0);
  return code <= 0xff
    ? `\\x${code.toString(16).padStart(2, "0")}`
    : `\\u${code.toString(16).padStart(4, "0")}`;
}

/**
 * `text` with every character that could act on a terminal shown as a
 * visible escape. Bytes are decoded as UTF-8, and each byte of an invalid
 * sequence is shown as `\xNN` (so a name in another encoding stays legible
 * and distinct, where a decoder would print U+FFFD).
 */
export function escapeForTerminal(text: string | Uint8Array): string {
  const decoded = typeof text === "string" ? text : decodeShowingInvalid(text);
  return decoded.replace(UNSAFE, escapeChar);
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function decodeShowingInvalid(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    // Rare path: one sequence at a time, its length read from its lead byte.
  }
  let out = "";
  for (let i = 0; i < bytes.length; ) {
    const lead = bytes[i]!;
    const length = lead < 0x80 ? 1 : lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    try {
      out += strictUtf8.decode(bytes.subarray(i, i + length));
      i += length;
    } catch {
      out += `\\x${lead.toString(16).padStart(2, "0")}`;
      i += 1;
    }
  }
  return out;
}
