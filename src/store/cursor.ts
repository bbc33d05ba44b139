/** Opaque page cursors for newest-first listings: the last item's creation time and id. */
export interface CursorPosition {
  readonly createdAt: number;
  readonly id: string;
}

export function encodeCursor(position: CursorPosition): string {
  return Buffer.from(`${position.createdAt}:${position.id}`, 'utf8').toString('base64url');
}

/** Returns undefined for a cursor this server did not make. */
export function decodeCursor(cursor: string): CursorPosition | undefined {
  const decoded = Buffer.from(cursor, 'base64url').toString('utf8');
  const match = /^(\d{1,16}):([0-9a-f-]{36})$/.exec(decoded);
  return match ? { createdAt: Number(match[1]), id: match[2]! } : undefined;
}
