// Type-checks ../argo-smart-routing.json against the Dashboard type that
// Grafana publishes in @grafana/schema, so a dashboard that Grafana would
// misread (a string where a number belongs, an object where an array
// belongs, a misspelled key) fails `tsc --noEmit -p dashboards/check`.
// tests/dashboard.rs runs it as part of `cargo test`.
//
// A JSON import is typed with its literals widened: `"type": "row"` becomes
// `string`, `"mode": "absolute"` becomes `string`. A plain
// `json satisfies Dashboard` would therefore reject every correct dashboard
// (string is not the enum ThresholdsMode), and the usual way out, `as`,
// would accept anything. So the JSON is checked against two derived types:
//
// - Loose<Dashboard>: Dashboard with every string-literal union and string
//   enum relaxed to `string` (and number enums to `number`); everything else
//   (numbers, booleans, arrays, nested shapes, required keys) as Grafana's.
// - Known<typeof json, Dashboard>: every key the JSON uses must exist in the
//   Dashboard type at that place. TypeScript only rejects unknown keys in
//   object literals written in a .ts file, never in an imported JSON value,
//   so this is spelled out here. Where Grafana's type says
//   Record<string, unknown> (panel options, targets, custom field config)
//   any key is accepted, as Grafana does. The one key Grafana itself writes
//   that the schema lacks, a query variable's `definition` (the text shown
//   in the variables list), is allowed too, so an exported dashboard passes.
//
// The relaxed string values (panel types, units, enum members) are what
// this cannot check; tests/dashboard.rs checks the queries against a real
// Prometheus.

import type { Dashboard, VariableModel } from '@grafana/schema';
import json from '../argo-smart-routing.json';

type Loose<T> = T extends string
  ? string
  : T extends number
    ? number
    : T extends boolean
      ? boolean
      : T extends readonly (infer E)[]
        ? Loose<E>[]
        : T extends object
          ? { [K in keyof T]: Loose<T[K]> }
          : T;

// The keys allowed where the schema says S (S may be a union, e.g. Panel | RowPanel).
type KeysOf<S> = S extends readonly unknown[] ? never : S extends object ? keyof S : never;
// The type of key K in whichever members of S have it.
type PropOf<S, K> = S extends readonly unknown[]
  ? never
  : S extends object
    ? K extends keyof S
      ? S[K]
      : never
    : never;
type ElementOf<S> = S extends readonly (infer E)[] ? E : never;

type Known<T, S> = unknown extends S
  ? T // the schema allows anything here
  : T extends readonly (infer E)[]
    ? Known<E, ElementOf<NonNullable<S>>>[]
    : T extends object
      ? { [K in keyof T]: K extends KeysOf<NonNullable<S>> ? Known<T[K], PropOf<NonNullable<S>, K>> : never }
      : T;

type Exported = Omit<Dashboard, 'templating'> & {
  templating?: { list?: Array<VariableModel & { definition?: string }> };
};

export const dashboard = json satisfies Loose<Exported>;
json satisfies Known<typeof json, Exported>;

// The check above must be able to fail: these deliberately broken copies
// must be refused (tsc reports an unused @ts-expect-error otherwise).
// @ts-expect-error schemaVersion is a number
({ ...json, schemaVersion: '39' }) satisfies Loose<Dashboard>;
// @ts-expect-error gridPos.w is a number
({ ...json, panels: [{ type: 'stat', gridPos: { x: 0, y: 0, w: '24', h: 1 } }] }) satisfies Loose<Dashboard>;
// @ts-expect-error a misspelled key is not in the schema
({ ...json, schemaVerison: 39 }) satisfies Known<typeof json & { schemaVerison: number }, Exported>;
