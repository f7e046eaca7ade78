// Discovery from a card URL, a blocking send routed by skill, and GetTask, with the A2A JS SDK
// over the binding named on the command line: check.mjs <base url> <binding> <skill>. Prints one JSON line; exits 1 on error.
import { ClientFactory, ClientFactoryOptions, JsonRpcTransportFactory, RestTransportFactory } from "@a2a-js/sdk/client";
import { Role } from "@a2a-js/sdk";

const [baseUrl, binding, skill] = process.argv.slice(2);
const transport = binding === "HTTP+JSON" ? new RestTransportFactory() : new JsonRpcTransportFactory();
const factory = new ClientFactory(
  ClientFactoryOptions.createFrom(ClientFactoryOptions.default, { transports: [transport], preferredTransports: [binding] }),
);
try {
  const client = await factory.createFromUrl(baseUrl);
  const sent = await client.sendMessage({
    message: {
      messageId: `js-${binding}-${Date.now()}`,
      role: Role.ROLE_USER,
      parts: [{ content: { $case: "data", value: { from: "js" } }, metadata: undefined, filename: "", mediaType: "" }],
      metadata: { skill },
      contextId: "",
      taskId: "",
      extensions: [],
      referenceTaskIds: [],
    },
  });
  const task = "status" in sent ? sent : null;
  if (!task) throw new Error("the answer is not a task: " + JSON.stringify(sent));
  const got = await client.getTask({ id: task.id });
  const part = got.artifacts[0]?.parts[0]?.content;
  console.log(JSON.stringify({ id: got.id, sentId: task.id, state: got.status.state, data: part?.$case === "data" ? part.value : null }));
} catch (err) {
  console.error(String(err?.stack || err));
  process.exit(1);
}
