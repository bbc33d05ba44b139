import { type Static, Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { TemplateVersion, TemplateVersionSummary } from '../../domain/template.js';
import { MailroomError, validationError } from '../../errors.js';
import { prepareTemplate } from '../../templates/prepare-template.js';
import { renderEmail } from '../../templates/render-email.js';
import { TEMPLATE_LIMITS } from '../../templates/template-engine.js';
import type { ApiContext } from '../api-context.js';

const CodeParams = Type.Object({
  code: Type.String({ minLength: 1, maxLength: TEMPLATE_LIMITS.codeChars, pattern: '^[A-Za-z0-9_.-]+$' }),
});
const VersionQuery = Type.Object(
  { version: Type.Optional(Type.Integer({ minimum: 1 })) },
  { additionalProperties: false },
);
const ListQuery = Type.Object(
  {
    limit: Type.Integer({ minimum: 1, maximum: 100, default: 50 }),
    after: Type.Optional(Type.String({ maxLength: TEMPLATE_LIMITS.codeChars })),
  },
  { additionalProperties: false },
);
const TemplateBody = Type.Object({
  code: Type.String(),
  subject: Type.String(),
  html: Type.Optional(Type.String()),
  text: Type.Optional(Type.String()),
  mjml: Type.Optional(Type.String()),
});
const PreviewBody = Type.Object({
  variables: Type.Optional(Type.Object({})),
  version: Type.Optional(Type.Integer({ minimum: 1 })),
});

type Code = Static<typeof CodeParams>;
const iso = (epochMs: number) => new Date(epochMs).toISOString();

function presentVersion(template: TemplateVersion) {
  return {
    code: template.code,
    version: template.version,
    subject: template.subject,
    html: template.html ?? null,
    text: template.text ?? null,
    mjml: template.mjml ?? null,
    required_variables: template.requiredVariables,
    saved_at: iso(template.savedAt),
  };
}

function presentSummary(summary: TemplateVersionSummary) {
  return {
    code: summary.code,
    version: summary.version,
    subject: summary.subject,
    saved_at: iso(summary.savedAt),
  };
}

function notFound(code: string, version?: number): MailroomError {
  return new MailroomError(
    'NOT_FOUND',
    version === undefined ? `No template ${code}.` : `Template ${code} has no version ${version}.`,
  );
}

/** `/v1/templates`: saved subjects and bodies, versioned, rendered with a request's variables. */
export async function registerTemplateRoutes(app: FastifyInstance, ctx: ApiContext): Promise<void> {
  app.post(
    '/v1/templates',
    { schema: { tags: ['templates'], summary: 'Create a template (version 1)', body: TemplateBody } },
    async (request, reply) => {
      const prepared = await prepareTemplate(request.body, true);
      if (!prepared.ok) throw validationError(prepared.problems);
      const code = prepared.value.code!;
      const saved = await ctx.store.createTemplate(code, prepared.value.content, Date.now());
      if (!saved)
        throw new MailroomError(
          'TEMPLATE_EXISTS',
          `Template ${code} exists; PUT /v1/templates/${code} saves a new version.`,
        );
      return reply.status(201).send(presentVersion(saved));
    },
  );

  app.get<{ Querystring: Static<typeof ListQuery> }>(
    '/v1/templates',
    {
      schema: {
        tags: ['templates'],
        summary: 'List templates by code, newest version of each',
        querystring: ListQuery,
      },
    },
    async (request) => {
      const { limit, after } = request.query;
      const page = await ctx.store.listTemplates(limit + 1, after);
      const items = page.slice(0, limit);
      return {
        data: items.map(presentSummary),
        next_after: page.length > limit ? (items.at(-1)?.code ?? null) : null,
      };
    },
  );

  app.get<{ Params: Code; Querystring: Static<typeof VersionQuery> }>(
    '/v1/templates/:code',
    {
      schema: {
        tags: ['templates'],
        summary: 'A template: its newest version, or ?version=',
        params: CodeParams,
        querystring: VersionQuery,
      },
    },
    async (request) => {
      const { code } = request.params;
      const template = await ctx.store.getTemplate(code, request.query.version);
      if (!template) throw notFound(code, request.query.version);
      return presentVersion(template);
    },
  );

  app.put<{ Params: Code }>(
    '/v1/templates/:code',
    {
      schema: {
        tags: ['templates'],
        summary: 'Save a new version of a template',
        params: CodeParams,
        body: Type.Omit(TemplateBody, ['code']),
      },
    },
    async (request) => {
      const prepared = await prepareTemplate(request.body, false);
      if (!prepared.ok) throw validationError(prepared.problems);
      const saved = await ctx.store.updateTemplate(request.params.code, prepared.value.content, Date.now());
      if (!saved) throw notFound(request.params.code);
      return presentVersion(saved);
    },
  );

  app.delete<{ Params: Code }>(
    '/v1/templates/:code',
    {
      schema: { tags: ['templates'], summary: 'Delete a template and all its versions', params: CodeParams },
    },
    async (request, reply) => {
      if (!(await ctx.store.deleteTemplate(request.params.code))) throw notFound(request.params.code);
      return reply.status(204).send();
    },
  );

  app.get<{ Params: Code }>(
    '/v1/templates/:code/versions',
    {
      schema: {
        tags: ['templates'],
        summary: 'Every version of a template, oldest first',
        params: CodeParams,
      },
    },
    async (request) => {
      const versions = await ctx.store.listTemplateVersions(request.params.code);
      if (!versions) throw notFound(request.params.code);
      return { data: versions.map(presentSummary) };
    },
  );

  app.post<{ Params: Code }>(
    '/v1/templates/:code/preview',
    {
      schema: {
        tags: ['templates'],
        summary: 'Render a template with the given variables; nothing is sent',
        params: CodeParams,
        body: PreviewBody,
      },
    },
    async (request) => {
      const body = (request.body ?? {}) as { variables?: unknown; version?: unknown };
      if (
        body.version !== undefined &&
        (typeof body.version !== 'number' || !Number.isInteger(body.version) || body.version < 1)
      ) {
        throw validationError([{ field: 'version', rule: 'type', message: 'must be an integer from 1' }]);
      }
      const version = body.version as number | undefined;
      const template = await ctx.store.getTemplate(request.params.code, version);
      if (!template) throw notFound(request.params.code, version);
      const rendered = renderEmail(template, body.variables, ctx.config.maxMessageBytes);
      if (!rendered.ok) {
        const error = validationError(rendered.problems);
        if (rendered.tooLarge) throw new MailroomError('PAYLOAD_TOO_LARGE', error.message, rendered.problems);
        throw error;
      }
      return {
        code: template.code,
        version: template.version,
        subject: rendered.subject,
        html: rendered.html ?? null,
        text: rendered.text,
      };
    },
  );
}
