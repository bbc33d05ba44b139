/**
 * What a benchmark run must undo however it ends (normally, on an error, on Ctrl-C): child
 * processes to stop, a PostgreSQL schema to drop, RabbitMQ queues to delete, a temporary directory.
 * Tasks run newest first, each at most once; a failing task is logged and the rest still run.
 */
const log = (line: string) => console.error(line);

interface Task {
  readonly label: string;
  readonly run: () => Promise<void>;
  done?: Promise<void>;
  reported?: boolean;
}

export class Janitor {
  private readonly tasks: Task[] = [];

  /**
   * Registers a task; returns a function that runs it now (once) and reports its failure by
   * rejecting, for a shape that cleans up before the next one starts.
   */
  add(label: string, run: () => Promise<void>): () => Promise<void> {
    const task: Task = { label, run };
    this.tasks.push(task);
    return () => this.runTask(task, true);
  }

  /** Runs every task not yet run, newest first; never rejects. */
  async runAll(): Promise<void> {
    for (const task of [...this.tasks].reverse()) await this.runTask(task, false);
  }

  private runTask(task: Task, rethrow: boolean): Promise<void> {
    task.done ??= task.run();
    return task.done.catch((error: unknown) => {
      if (!task.reported) log(`cleanup: ${task.label} failed: ${(error as Error).message ?? error}`);
      task.reported = true;
      if (rethrow) throw error;
    });
  }
}
