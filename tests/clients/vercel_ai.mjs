// Runs Vercel AI SDK calls against the gateway and prints one JSON line of results.
//
// Input (argv[2], JSON): {"gateway": "http://127.0.0.1:PORT", "key": "...", "cases": [case, ...]}
// where a case is {"provider": "openai" | "openai.chat" | "anthropic" | "google", "model": "...",
// "call": "generateText" | "streamText" | "tools" | "streamTools" | "object" | "streamObject" |
// "conversation", "prompt": "...", and optionally "system", "providerOptions", "followUp" (the
// second user turn of a conversation)}, or {"provider": "openai" | "google", "model": "...", "call":
// "embed", "values": [...]} (embed for one value, embedMany for more). The cases run one after
// another (the fake upstream answers its scripted replies in order).
// Output: one JSON list, in the cases' order, of {"text", "finishReason", "usage", and per call
// "deltas", "reasoning", "steps", "object", "partials", "first"; "embeddings" and "tokens" for
// embed} or, when the SDK threw,
// {"error": {"name", "statusCode", "message", "responseBody"}}.
import { createAnthropic } from "@ai-sdk/anthropic";
import { createGoogleGenerativeAI } from "@ai-sdk/google";
import { createOpenAI } from "@ai-sdk/openai";
import {
  embed,
  embedMany,
  generateObject,
  generateText,
  jsonSchema,
  stepCountIs,
  streamObject,
  streamText,
  tool,
} from "ai";

const { gateway, key, cases } = JSON.parse(process.argv[2]);

function model(provider, name) {
  switch (provider) {
    case "openai":
      return createOpenAI({ baseURL: `${gateway}/v1`, apiKey: key })(name);
    case "openai.chat":
      return createOpenAI({ baseURL: `${gateway}/v1`, apiKey: key }).chat(name);
    case "anthropic":
      return createAnthropic({ baseURL: `${gateway}/v1`, apiKey: key })(name);
    case "google":
      return createGoogleGenerativeAI({ baseURL: `${gateway}/v1beta`, apiKey: key })(name);
    default:
      throw new Error(`unknown provider ${provider}`);
  }
}

function embeddingModel(provider, name) {
  switch (provider) {
    case "openai":
      return createOpenAI({ baseURL: `${gateway}/v1`, apiKey: key }).embeddingModel(name);
    case "google":
      return createGoogleGenerativeAI({ baseURL: `${gateway}/v1beta`, apiKey: key }).embeddingModel(name);
    default:
      throw new Error(`no embeddings for provider ${provider}`);
  }
}

async function embedding(c) {
  const options = { model: embeddingModel(c.provider, c.model), maxRetries: 0 };
  if (c.providerOptions) options.providerOptions = c.providerOptions;
  if (c.values.length === 1) {
    const r = await embed({ ...options, value: c.values[0] });
    return { embeddings: [r.embedding], tokens: r.usage?.tokens ?? null };
  }
  const r = await embedMany({ ...options, values: c.values });
  return { embeddings: r.embeddings, tokens: r.usage?.tokens ?? null };
}

const weather = tool({
  description: "Weather for a city",
  inputSchema: jsonSchema({
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  }),
  execute: async ({ city }) => ({ city, forecast: `sunny in ${city}` }),
});

const CITY = jsonSchema({
  type: "object",
  properties: { name: { type: "string" }, population: { type: "integer" } },
  required: ["name", "population"],
  additionalProperties: false,
});

function usage(u) {
  return {
    inputTokens: u?.inputTokens ?? null,
    outputTokens: u?.outputTokens ?? null,
    totalTokens: u?.totalTokens ?? null,
    cacheReadTokens: u?.inputTokenDetails?.cacheReadTokens ?? null,
    reasoningTokens: u?.outputTokenDetails?.reasoningTokens ?? null,
  };
}

function steps(all) {
  return all.map((s) => ({
    finishReason: s.finishReason,
    text: s.text,
    toolCalls: s.toolCalls.map((c) => ({ id: c.toolCallId, name: c.toolName, input: c.input })),
    toolResults: s.toolResults.map((r) => ({ id: r.toolCallId, output: r.output })),
  }));
}

async function run(c) {
  if (c.call === "embed") return embedding(c);
  const common = { model: model(c.provider, c.model), prompt: c.prompt, maxRetries: 0 };
  if (c.system) common.system = c.system;
  if (c.providerOptions) common.providerOptions = c.providerOptions;
  const tools = { get_weather: weather };
  switch (c.call) {
    case "generateText": {
      const r = await generateText(common);
      return { text: r.text, reasoning: r.reasoningText ?? null, finishReason: r.finishReason, usage: usage(r.usage) };
    }
    case "streamText": {
      let streamError = null;
      const r = streamText({ ...common, onError: ({ error }) => (streamError = error) });
      const deltas = [];
      for await (const delta of r.textStream) deltas.push(delta);
      if (streamError) throw streamError;
      return {
        text: await r.text,
        deltas,
        reasoning: (await r.reasoningText) ?? null,
        finishReason: await r.finishReason,
        usage: usage(await r.totalUsage),
      };
    }
    case "tools": {
      const r = await generateText({ ...common, tools, stopWhen: stepCountIs(2) });
      return { text: r.text, finishReason: r.finishReason, usage: usage(r.totalUsage), steps: steps(r.steps) };
    }
    case "streamTools": {
      let streamError = null;
      const r = streamText({ ...common, tools, stopWhen: stepCountIs(2), onError: ({ error }) => (streamError = error) });
      const deltas = [];
      for await (const delta of r.textStream) deltas.push(delta);
      if (streamError) throw streamError;
      return {
        text: await r.text,
        deltas,
        finishReason: await r.finishReason,
        usage: usage(await r.totalUsage),
        steps: steps(await r.steps),
      };
    }
    case "streamObject": {
      const r = streamObject({ ...common, schema: CITY, schemaName: "city" });
      const partials = [];
      for await (const partial of r.partialObjectStream) partials.push(partial);
      return { object: await r.object, partials: partials.length, finishReason: await r.finishReason, usage: usage(await r.usage) };
    }
    case "conversation": {
      // two turns, the second carrying the first's answer as the SDK hands it back
      const first = await generateText(common);
      const { prompt, ...rest } = common;
      const messages = [{ role: "user", content: prompt }, ...first.response.messages, { role: "user", content: c.followUp }];
      const second = await generateText({ ...rest, messages });
      return { text: second.text, first: first.text, finishReason: second.finishReason, usage: usage(second.usage) };
    }
    case "object": {
      const r = await generateObject({ ...common, schema: CITY, schemaName: "city" });
      return { object: r.object, finishReason: r.finishReason, usage: usage(r.usage) };
    }
    default:
      throw new Error(`unknown call ${c.call}`);
  }
}

const results = [];
for (const c of cases) {
  try {
    results.push(await run(c));
  } catch (error) {
    // APICallError (maybe wrapped in a RetryError), or whatever the SDK threw
    const cause = error?.lastError ?? error;
    results.push({
      error: {
        name: cause?.name ?? null,
        statusCode: cause?.statusCode ?? null,
        message: String(cause?.message ?? cause),
        responseBody: cause?.responseBody ?? null,
      },
    });
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
