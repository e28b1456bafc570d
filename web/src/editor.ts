// The code editor of a cell: CodeMirror 6 with Python highlighting.
// Shift+Enter runs the cell and moves on, Ctrl/Cmd+Enter runs it in place.

import { closeCompletion } from "@codemirror/autocomplete";
import { python } from "@codemirror/lang-python";
import { Prec } from "@codemirror/state";
import { EditorView, keymap, placeholder } from "@codemirror/view";
import { basicSetup } from "codemirror";

export interface EditorHooks {
  run: (advance: boolean) => void;
}

const theme = EditorView.theme({
  "&": { fontSize: "13.5px", backgroundColor: "var(--code-bg)" },
  ".cm-content": { fontFamily: "var(--mono)", padding: "8px 0" },
  ".cm-gutters": { backgroundColor: "var(--code-bg)", borderRight: "none", color: "#8c959f" },
  "&.cm-focused": { outline: "none" },
  ".cm-activeLine, .cm-activeLineGutter": { backgroundColor: "transparent" },
  "&.cm-focused .cm-activeLine": { backgroundColor: "#eef4fd" },
});

export function createEditor(parent: HTMLElement, doc: string, hooks: EditorHooks): EditorView {
  return new EditorView({
    doc,
    parent,
    extensions: [
      Prec.highest(
        keymap.of([
          { key: "Shift-Enter", run: (view) => (closeCompletion(view), hooks.run(true), true) },
          { key: "Mod-Enter", run: (view) => (closeCompletion(view), hooks.run(false), true) },
        ]),
      ),
      basicSetup,
      python(),
      theme,
      placeholder("print('hello')   — Shift+Enter runs the cell"),
      EditorView.contentAttributes.of({ "aria-label": "cell code" }),
    ],
  });
}
