import type { TemplateContent, TemplateVersion, TemplateVersionSummary } from '../../domain/template.js';
import type { Database, Sql } from './database.js';

interface TemplateRow {
  code: string;
  version: number;
  subject: string;
  html: string | null;
  text: string | null;
  mjml: string | null;
  required_variables: string[];
  saved_at: string | number;
}

const SUMMARY = 'v.code, v.version, v.subject, v.saved_at';

/** Templates and their versions (not a hot path: plain statements, durable commits). */
export class PostgresTemplates {
  constructor(private readonly db: Database) {}

  create(code: string, content: TemplateContent, now: number): Promise<TemplateVersion | undefined> {
    return this.db.transaction(async (sql) => {
      const inserted = await sql.query(
        'INSERT INTO templates (code, latest_version, created_at) VALUES ($1, 1, $2) ON CONFLICT DO NOTHING',
        [code, now],
      );
      if (!inserted.rowCount) return undefined;
      return insertVersion(sql, code, 1, content, now);
    });
  }

  update(code: string, content: TemplateContent, now: number): Promise<TemplateVersion | undefined> {
    return this.db.transaction(async (sql) => {
      // The row lock taken here orders concurrent saves: each gets the next number.
      const { rows } = await sql.query<{ latest_version: number }>(
        'UPDATE templates SET latest_version = latest_version + 1 WHERE code = $1 RETURNING latest_version',
        [code],
      );
      const row = rows[0];
      if (!row) return undefined;
      return insertVersion(sql, code, row.latest_version, content, now);
    });
  }

  async get(code: string, version?: number): Promise<TemplateVersion | undefined> {
    const { rows } =
      version === undefined
        ? await this.db.query<TemplateRow>(
            `SELECT v.* FROM templates t
               JOIN template_versions v ON v.code = t.code AND v.version = t.latest_version
              WHERE t.code = $1`,
            [code],
          )
        : await this.db.query<TemplateRow>(
            'SELECT v.* FROM template_versions v WHERE v.code = $1 AND v.version = $2',
            [code, version],
          );
    const row = rows[0];
    return row ? toTemplateVersion(row) : undefined;
  }

  async list(limit: number, after?: string): Promise<TemplateVersionSummary[]> {
    const { rows } = await this.db.query<TemplateRow>(
      `SELECT ${SUMMARY} FROM templates t
         JOIN template_versions v ON v.code = t.code AND v.version = t.latest_version
        WHERE t.code > $1 ORDER BY t.code LIMIT $2`,
      [after ?? '', limit],
    );
    return rows.map(toSummary);
  }

  async versions(code: string): Promise<TemplateVersionSummary[] | undefined> {
    const { rows } = await this.db.query<TemplateRow>(
      `SELECT ${SUMMARY} FROM template_versions v WHERE v.code = $1 ORDER BY v.version`,
      [code],
    );
    // Every template has version 1 from its creation: no rows means no template.
    return rows.length > 0 ? rows.map(toSummary) : undefined;
  }

  async delete(code: string): Promise<boolean> {
    // Versions go with it (ON DELETE CASCADE), in the same statement.
    const result = await this.db.query('DELETE FROM templates WHERE code = $1', [code]);
    return (result.rowCount ?? 0) > 0;
  }
}

async function insertVersion(
  sql: Sql,
  code: string,
  version: number,
  content: TemplateContent,
  now: number,
): Promise<TemplateVersion> {
  await sql.query(
    `INSERT INTO template_versions (code, version, subject, html, text, mjml, required_variables, saved_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [
      code,
      version,
      content.subject,
      content.html ?? null,
      content.text ?? null,
      content.mjml ?? null,
      JSON.stringify(content.requiredVariables),
      now,
    ],
  );
  return { code, version, savedAt: now, ...content };
}

function toTemplateVersion(row: TemplateRow): TemplateVersion {
  return {
    code: row.code,
    version: row.version,
    subject: row.subject,
    ...(row.html !== null && { html: row.html }),
    ...(row.text !== null && { text: row.text }),
    ...(row.mjml !== null && { mjml: row.mjml }),
    requiredVariables: row.required_variables,
    savedAt: Number(row.saved_at),
  };
}

function toSummary(row: TemplateRow): TemplateVersionSummary {
  return { code: row.code, version: row.version, subject: row.subject, savedAt: Number(row.saved_at) };
}
