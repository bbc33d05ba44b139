/**
 * Templates: an email's subject and bodies kept under a code (`welcome_email`), filled with a
 * request's variables when an email is accepted.
 *
 * Glossary (also in docs/templates.md):
 * - **template**: a code and its versions; the newest version is the one used unless an email pins one.
 * - **version**: one saved content of a template, numbered from 1; saving again adds a version, never
 *   changes one.
 * - **variables**: the values a request fills a template with (`{"name": "Ada"}`); the **required**
 *   ones are those the template prints outside any block (found when the version is saved).
 */

/** What a version holds, checked and compiled (MJML already turned into `html`). */
export interface TemplateContent {
  /** Handlebars, rendered without HTML escaping; the result must hold no CR, LF or NUL. */
  readonly subject: string;
  /** Handlebars, HTML-escaped. Compiled from `mjml` when the version was saved from MJML. */
  readonly html?: string;
  /** Handlebars, not escaped. When absent, the text part is made from the rendered HTML. */
  readonly text?: string;
  /** The MJML source `html` was compiled from, kept to show and edit. */
  readonly mjml?: string;
  /** Dotted paths (`name`, `user.email`) a request must give, found in subject, html and text. */
  readonly requiredVariables: readonly string[];
}

export interface TemplateVersion extends TemplateContent {
  readonly code: string;
  readonly version: number;
  /** When this version was saved (epoch ms). */
  readonly savedAt: number;
}

/** A version without its bodies, for lists. */
export interface TemplateVersionSummary {
  readonly code: string;
  readonly version: number;
  readonly subject: string;
  readonly savedAt: number;
}
