/**
 * The Message-ID of a job's email: derived from the job id alone, so every attempt of one job carries
 * the same id and a duplicate delivery is recognisable downstream.
 */
export function messageIdFor(jobId: string, fromAddress: string): string {
  const domain = fromAddress.slice(fromAddress.lastIndexOf('@') + 1) || 'mailroom.invalid';
  return `<${jobId}@${domain}>`;
}
