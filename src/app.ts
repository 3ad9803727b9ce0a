import fastifySwagger from "@fastify/swagger";
import fastifySwaggerUi from "@fastify/swagger-ui";
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance } from "fastify";
import { jsonSchemaTransform, type ZodTypeProvider } from "fastify-type-provider-zod";
import type { z } from "zod";
import { createAdminAuthenticator } from "./admin/auth.js";
import { createOverviewQueries } from "./admin/overview.js";
import { registerConsoleRoutes } from "./console/routes.js";
import { adminRoutes } from "./admin/routes.js";
import type { Services } from "./compose.js";
import type { Config } from "./config.js";
import { readContractExamples } from "./contract-examples.js";
import { ResponseSchemaViolation } from "./errors.js";
import { createHttpFront } from "./http-server.js";
import { createIdGenerator } from "./lib/ids.js";
import { LOG_SERIALIZERS } from "./log.js";
import { createOpenApiFinisher } from "./openapi-document.js";
import { registerOpsRoutes, type WorkerProbe } from "./ops-routes.js";
import { createAuthenticator } from "./orange/auth.js";
import { frameworkError, registerErrorHandling, sendError } from "./orange/error-handler.js";
import { createPingFastPath } from "./orange/ping.js";
import { orangeRoutes } from "./orange/routes.js";
import { zodValidatorCompiler } from "./orange/validation.js";
import { REQUEST_ID_HEADER, requestIdFor } from "./request-context.js";

export interface AppDeps {
  config: Config;
  /** Built once by the composition root (compose.ts), shared with the worker. */
  services: Services;
  /** The process logger (main.ts), or false for none; default: pino at config.logLevel. */
  logger?: FastifyBaseLogger | false;
  /** The worker this process runs, once started: /health/ready checks it too. */
  worker?: () => WorkerProbe | undefined;
}

export const API_VERSION = "2.2.0";

/** Keeps secrets out of the logs whatever a log line carries. */
export const LOG_REDACT = [
  "req.headers.authorization",
  "req.headers.cookie",
  "req.headers['x-api-key']",
  "headers.authorization",
  "*.password",
  "*.clientSecret",
  "*.token",
];

export { LOG_SERIALIZERS };

/**
 * Builds the Fastify instance without listening: main.ts listens, tests call `inject`.
 */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const { config, services } = deps;
  const { db, catalogue } = services;
  // Request ids only: partner ids come from the services' own generator.
  const ids = createIdGenerator();

  const requestId = (req: Parameters<typeof requestIdFor>[0]) => requestIdFor(req, ids);
  // An open GET /ping is answered before routing (src/orange/ping.ts); `inject` bypasses the
  // server, so tests reach the Fastify route, which answers the same bytes.
  const front = createHttpFront({
    limits: config.http,
    pingFastPath: services.metrics.countFastPath(createPingFastPath(config.inboundAuth.pingOpen || config.inboundAuth.disabled, requestId), "/ping"),
    requestId,
    freshRequestId: () => ids.next("req"),
  });
  const app = Fastify({
    serverFactory: front.serverFactory,
    clientErrorHandler: front.clientErrorHandler,
    ...(deps.logger === undefined
      ? { logger: { level: config.logLevel, redact: LOG_REDACT, serializers: LOG_SERIALIZERS } }
      : deps.logger === false
        ? { logger: false }
        : // Whatever logger it is given, errors are logged without SQL, parameters or row values.
          { loggerInstance: deps.logger.child({}, { serializers: LOG_SERIALIZERS }) }),
    bodyLimit: config.bodyLimitBytes,
    trustProxy: config.trustProxy,
    // The server answers 503 itself while draining, in Orange's format (src/http-server.ts).
    return503OnClosing: false,
    // Fastify would take any x-request-id as is: the id is checked first (src/request-context.ts).
    requestIdHeader: false,
    genReqId: requestId,
    // Errors met before routing: no hook runs, hence the request id here.
    frameworkErrors: (error: FastifyError, request, reply) =>
      sendError(reply.header(REQUEST_ID_HEADER, request.id), frameworkError(error)),
  }).withTypeProvider<ZodTypeProvider>();
  front.setLogger(app.log);

  app.addHook("onRequest", (request, reply, done) => {
    reply.header(REQUEST_ID_HEADER, request.id);
    done();
  });
  app.addHook("preClose", async () => front.drain());
  app.setValidatorCompiler(zodValidatorCompiler);
  app.setSerializerCompiler(({ schema, url, method }) => {
    if (!config.responseValidation) return (data) => JSON.stringify(data);
    const zodSchema = schema as z.ZodType;
    return (data) => {
      const result = zodSchema.safeParse(data);
      if (!result.success) {
        app.log.error({ url, method, issues: result.error.issues }, "response breaks its schema");
        throw new ResponseSchemaViolation(JSON.stringify(result.error.issues));
      }
      return JSON.stringify(data);
    };
  });
  // Only JSON is spoken here: other media types get 415 instead of a confusing 400.
  app.removeContentTypeParser(["text/plain"]);
  registerErrorHandling(app, config.bodyLimitBytes);
  // /health/*, /metrics, and the count of every answer (before the other routes: see registerOpsRoutes).
  registerOpsRoutes(app, {
    db,
    metrics: services.metrics,
    tokens: { admin: config.admin.token, metrics: config.metrics.token },
    worker: deps.worker,
    probeTimeoutMs: config.databaseConnectTimeoutMs,
  });

  await app.register(fastifySwagger, {
    openapi: {
      openapi: "3.1.0",
      // The description, servers, tags, webhooks and examples: src/openapi-document.ts.
      info: { title: "Orange Business Applications — partner API", version: API_VERSION },
      components: {
        securitySchemes: {
          basic: { type: "http", scheme: "basic" },
          bearer: { type: "http", scheme: "bearer" },
          apiKey: { type: "apiKey", in: "header", name: config.inboundAuth.apiKey?.header ?? "x-api-key" },
          adminBearer: { type: "http", scheme: "bearer", description: "ADMIN_TOKEN: the operators' /admin/v1 API" },
          appBearer: {
            type: "http",
            scheme: "bearer",
            description: "APP_TOKEN: the partner's application, for the routes it calls (its late results, its own licence changes)",
          },
          orangeOAuth: {
            type: "oauth2",
            description: "How this server authenticates to Orange's gateway when it sends events (ORANGE_CLIENT_ID, ORANGE_CLIENT_SECRET)",
            flows: { clientCredentials: { tokenUrl: "https://ope.apibackbone.orange.com/oauth/v3/token", scopes: {} } },
          },
        },
      },
      security: [{ basic: [] }, { bearer: [] }, { apiKey: [] }],
    },
    transform: jsonSchemaTransform,
    // Built on the first request for the document, not at start.
    transformObject: createOpenApiFinisher(() => readContractExamples()),
  });
  await app.register(fastifySwaggerUi, { routePrefix: "/docs" });

  await app.register(orangeRoutes, {
    orders: services.orders,
    updates: services.updates,
    licences: services.licences,
    codecs: services.codecs,
    catalogue,
    orderMaxQuantity: config.orderMaxQuantity,
    authenticate: createAuthenticator(config.inboundAuth),
    pingOpen: config.inboundAuth.pingOpen,
    orderingMode: config.orderingMode,
    updateMode: config.updateMode,
    responseValidation: config.responseValidation,
  });

  // The operators' API: its own credential, registered even when disabled (ADMIN_TOKEN unset) so
  // that it answers a clear 503 and the OpenAPI document does not depend on the configuration.
  await app.register(adminRoutes, {
    authenticate: createAdminAuthenticator({ admin: config.admin.token, application: config.app.token }),
    enabled: config.admin.token !== undefined,
    licenceChanges: services.licenceChanges,
    events: services.events,
    commands: services.commands,
    catalogue,
    records: services.records,
    overview: createOverviewQueries({ db, events: services.events }),
  });
  // The operators' console (/console): static files over the admin API, ADMIN_TOKEN typed in by the operator.
  registerConsoleRoutes(app);

  return app;
}
