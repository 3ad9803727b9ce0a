import { SaxesParser } from "saxes";
import { expect } from "vitest";

/** An element of a parsed XML document. */
export interface XmlElement {
  name: string;
  attributes: Record<string, string>;
  children: XmlElement[];
  text: string;
}

/**
 * Parses XML with saxes, a strict XML 1.0 parser (as Jenkins' and GitLab's are): a forbidden
 * character, an undefined entity, a `<` in an attribute or a mismatched tag throws.
 */
export function parseXml(xml: string): XmlElement {
  const parser = new SaxesParser();
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  let error: Error | undefined;
  parser.on("error", (err) => {
    error ??= err;
  });
  parser.on("opentag", (tag) => {
    const element: XmlElement = { name: tag.name, attributes: { ...(tag.attributes as Record<string, string>) }, children: [], text: "" };
    stack.at(-1)?.children.push(element);
    root ??= element;
    stack.push(element);
  });
  parser.on("text", (text) => {
    const top = stack.at(-1);
    if (top) top.text += text;
  });
  parser.on("closetag", () => {
    stack.pop();
  });
  parser.write(xml).close();
  if (error) throw error;
  if (!root) throw new Error("no root element");
  return root;
}

export const childrenNamed = (element: XmlElement, name: string): XmlElement[] => element.children.filter((c) => c.name === name);

const num = (element: XmlElement, attribute: string): number => Number(element.attributes[attribute]);

/**
 * The checks CI test reporters rely on: a <testsuites> root whose counts are the sums of its
 * <testsuite>s, whose counts are those of their <testcase>s (a <failure> with a message, a
 * <skipped>), and times in seconds. Returns the totals.
 */
export function junitTotals(xml: string): { suites: XmlElement[]; tests: number; failures: number; skipped: number } {
  const root = parseXml(xml);
  expect(root.name).toBe("testsuites");
  const suites = childrenNamed(root, "testsuite");
  let tests = 0;
  let failures = 0;
  let skipped = 0;
  for (const suite of suites) {
    expect(suite.attributes.name).toBeTruthy();
    const cases = childrenNamed(suite, "testcase");
    const failed = cases.filter((c) => childrenNamed(c, "failure").length > 0);
    const skips = cases.filter((c) => childrenNamed(c, "skipped").length > 0);
    for (const c of cases) {
      expect(c.attributes.name).toBeTruthy();
      expect(c.attributes.classname).toBeTruthy();
      expect(Number.isFinite(num(c, "time"))).toBe(true);
    }
    for (const c of failed) expect(childrenNamed(c, "failure")[0]!.attributes.message).toBeTruthy();
    expect({ tests: num(suite, "tests"), failures: num(suite, "failures"), skipped: num(suite, "skipped"), errors: num(suite, "errors") }).toEqual({
      tests: cases.length,
      failures: failed.length,
      skipped: skips.length,
      errors: 0,
    });
    expect(Number.isFinite(num(suite, "time"))).toBe(true);
    tests += cases.length;
    failures += failed.length;
    skipped += skips.length;
  }
  expect({ tests: num(root, "tests"), failures: num(root, "failures"), skipped: num(root, "skipped") }).toEqual({ tests, failures, skipped });
  return { suites, tests, failures, skipped };
}
