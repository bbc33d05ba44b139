// The slices of untyped packages that Mailroom uses (neither ships its own types).
declare module 'html-to-text' {
  export function convert(html: string, options?: Record<string, unknown>): string;
}

declare module 'mjml' {
  interface MjmlResult {
    readonly html: string;
    readonly errors: readonly { readonly formattedMessage: string; readonly message: string }[];
  }
  export default function mjml2html(
    input: string,
    options?: { validationLevel?: 'strict' | 'soft' | 'skip'; ignoreIncludes?: boolean; minify?: boolean },
  ): MjmlResult | Promise<MjmlResult>;
}
