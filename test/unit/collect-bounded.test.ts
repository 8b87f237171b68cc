import { once } from "node:events";
import { PassThrough } from "node:stream";
import { describe, expect, it } from "vitest";
import { collectBounded } from "../../src/transport/bridge.js";

describe("collectBounded", () => {
  it("joins every chunk of a stream that stays within the limit", async () => {
    const stream = new PassThrough();
    const joined = collectBounded(stream, 10);
    stream.end(Buffer.from("abc"));
    await once(stream, "end");
    expect(joined().toString()).toBe("abc");
  });

  it("keeps exactly the first 65,536 bytes of 1 MiB sent in 3,000-byte chunks", async () => {
    const stream = new PassThrough();
    const joined = collectBounded(stream, 65_536);
    const sent = Buffer.from(Array.from({ length: 1 << 20 }, (_, i) => i % 251));
    for (let at = 0; at < sent.length; at += 3000) stream.write(sent.subarray(at, at + 3000));
    stream.end();
    await once(stream, "end");
    expect(joined().length).toBe(65_536);
    expect(joined().equals(sent.subarray(0, 65_536))).toBe(true);
  });
});
