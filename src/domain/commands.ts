/**
 * What operators (and the partner's application) do with the commands to the application: list
 * them, read one with its attempts, end one by hand or with the application's late result, send
 * a parked one again. The actions go through the request lifecycle of the command's request.
 */
import type { Db } from "../db/sql.js";
import * as commands from "./commands.dal.js";
import type { AttemptRow, CommandListFilter, CommandRow } from "./commands.dal.js";
import { CommandStateConflict, type CommandResult, type RequestLifecycle } from "./lifecycle.js";

export type { AttemptRow, CommandListFilter, CommandRow };

export class UnknownCommand extends Error {
  override readonly name = "UnknownCommand";
}

export function createCommandService(deps: { db: Db; lifecycles: RequestLifecycle[] }) {
  const { db } = deps;
  const byKind = new Map(deps.lifecycles.map((l) => [l.kind as string, l]));

  async function lifecycleOf(id: string): Promise<RequestLifecycle> {
    const row = await commands.getCommand(db, id);
    if (!row) throw new UnknownCommand(`command ${JSON.stringify(id)} does not exist`);
    const lifecycle = byKind.get(row.request_kind);
    if (!lifecycle) throw new CommandStateConflict(`command ${id} belongs to no known kind of request`);
    return lifecycle;
  }

  return {
    list: (filter: CommandListFilter, page: { offset: number; limit: number }) => commands.listCommands(db, filter, page),
    async get(id: string): Promise<(CommandRow & { attempts_list: AttemptRow[] }) | undefined> {
      const row = await commands.getCommand(db, id);
      return row && { ...row, attempts_list: await commands.attemptsOf(db, id) };
    },
    async end(id: string, result: CommandResult, by: string): Promise<CommandRow> {
      return (await lifecycleOf(id)).endCommand(id, result, by);
    },
    async retry(id: string, by: string): Promise<CommandRow> {
      return (await lifecycleOf(id)).retryCommand(id, by);
    },
  };
}

export type CommandService = ReturnType<typeof createCommandService>;
