// A node:test reporter that prints one closing line, "N passed, N failed[, N skipped]",
// next to the spec reporter's output.

export default async function* summary(source) {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  let suitesFailed = 0;
  for await (const event of source) {
    const data = event.data ?? {};
    if (data.details?.type === "suite") {
      if (event.type === "test:fail") suitesFailed++;
      continue;
    }
    if (event.type === "test:pass") {
      if (data.skip || data.todo) skipped++;
      else passed++;
    } else if (event.type === "test:fail") {
      failed++;
    }
  }
  // A suite can fail with every test passed (an `after` hook failed): that is a failure too.
  if (failed === 0 && suitesFailed > 0) failed = suitesFailed;
  yield `\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}\n`;
}
