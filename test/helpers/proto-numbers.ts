// The field numbers of a tree of .proto files, read the way protoc reads
// them: `buf build` compiles the tree into a FileDescriptorSet, decoded with
// @bufbuild/protobuf. Run directly, it prints the numbers of a tree as JSON:
//   npx tsx test/helpers/proto-numbers.ts PROTO_DIR > numbers.json
// (how test/fixtures/upstream-proto-numbers.json was made from OpenShell's proto/).

import { execFileSync } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { fromBinary } from "@bufbuild/protobuf";
import { type DescriptorProto, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";

export interface MessageNumbers {
  /** Field name → number. */
  fields: Record<string, number>;
  /** Reserved ranges, inclusive. */
  reserved: [number, number][];
}

/** Message full name (`openshell.v1.SandboxSpec`) → its numbers; nested messages included. */
export type ProtoNumbers = Record<string, MessageNumbers>;

const BUF = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "node_modules", ".bin", "buf");

export function protoNumbers(protoDir: string): ProtoNumbers {
  const bytes = execFileSync(BUF, ["build", protoDir, "-o", "-"], { maxBuffer: 64 * 1024 * 1024 });
  const set = fromBinary(FileDescriptorSetSchema, bytes);
  const numbers: ProtoNumbers = {};
  const visit = (prefix: string, message: DescriptorProto): void => {
    const name = `${prefix}.${message.name}`;
    numbers[name] = {
      fields: Object.fromEntries(message.field.map((field) => [field.name, field.number])),
      // Descriptor ranges are end-exclusive.
      reserved: message.reservedRange.map((range) => [range.start, range.end - 1]),
    };
    for (const nested of message.nestedType) visit(name, nested);
  };
  for (const file of set.file) {
    if (file.name.startsWith("google/")) continue;
    for (const message of file.messageType) visit(file.package, message);
  }
  return numbers;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.stdout.write(`${JSON.stringify(protoNumbers(process.argv[2] ?? "proto"), null, 1)}\n`);
}
