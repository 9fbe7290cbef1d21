// The words the console shows (and puts in CSS classes, data-* attributes and URLs) for
// the API's enums. The API speaks enums; the console keeps speaking these lower-case words
// and converts at the API boundary, here and only here.

import { BudgetPeriod, Granularity } from "./gen/sidecar/v1/admin_pb";
import { BackendApi, BackendStatus, Role } from "./gen/sidecar/v1/types_pb";

// Unspecified is "" (what an unset string used to be); a Record over the enum makes the
// compiler ask for a word when the proto gains a value.
const BACKEND_STATUS: Record<BackendStatus, string> = {
  [BackendStatus.UNSPECIFIED]: "",
  [BackendStatus.HEALTHY]: "healthy",
  [BackendStatus.COOLING]: "cooling",
  [BackendStatus.ERROR]: "error",
  [BackendStatus.DISABLED]: "disabled",
};

const BACKEND_API: Record<BackendApi, string> = {
  [BackendApi.UNSPECIFIED]: "",
  [BackendApi.OPENAI]: "openai",
  [BackendApi.ANTHROPIC]: "anthropic",
};

const ROLE: Record<Role, string> = {
  [Role.UNSPECIFIED]: "",
  [Role.ADMIN]: "admin",
  [Role.VIEWER]: "viewer",
  [Role.NODE]: "node",
};

const GRANULARITY: Record<Granularity, string> = {
  [Granularity.UNSPECIFIED]: "",
  [Granularity.MINUTE]: "minute",
  [Granularity.HOUR]: "hour",
  [Granularity.DAY]: "day",
};

const BUDGET_PERIOD: Record<BudgetPeriod, string> = {
  [BudgetPeriod.UNSPECIFIED]: "",
  [BudgetPeriod.DAY]: "day",
  [BudgetPeriod.MONTH]: "month",
};

/** The word for `v`; a value this build does not know (a newer server) is "unknown". */
function toText<E extends number>(table: Record<E, string>, v: E): string {
  return table[v] ?? "unknown";
}

/** The value for `text`; an empty or unknown word is unspecified (0). */
function fromText<E extends number>(table: Record<E, string>, text: string): E {
  for (const [k, t] of Object.entries<string>(table)) if (t && t === text) return Number(k) as E;
  return 0 as E;
}

/** "healthy", "cooling", "error" or "disabled". */
export function backendStatusText(s: BackendStatus): string {
  return toText(BACKEND_STATUS, s);
}

/** "openai" or "anthropic"; "" (unspecified) is openai. */
export function backendApiText(a: BackendApi): string {
  return toText(BACKEND_API, a);
}

export function backendApiFromText(text: string): BackendApi {
  return fromText(BACKEND_API, text);
}

/** "admin", "viewer" or "node". */
export function roleText(r: Role): string {
  return toText(ROLE, r);
}

export function roleFromText(text: string): Role {
  return fromText(ROLE, text);
}

/** "minute", "hour" or "day". */
export function granularityText(g: Granularity): string {
  return toText(GRANULARITY, g);
}

/** "" (or anything else) is unspecified: the server picks from the range's length. */
export function granularityFromText(text: string): Granularity {
  return fromText(GRANULARITY, text);
}

/** "day" or "month" (a UTC day or calendar month). */
export function budgetPeriodText(p: BudgetPeriod): string {
  return toText(BUDGET_PERIOD, p);
}

export function budgetPeriodFromText(text: string): BudgetPeriod {
  return fromText(BUDGET_PERIOD, text);
}
