package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

func init() {
	register("completion", command{summary: "print a shell completion script: bash, zsh or fish", run: runCompletion})
}

// collectFlags, when set, receives each command's flag set instead of
// parsing (parseFlags): completion reads the commands' own definitions.
// Only runCompletion sets it, on one goroutine, and resets it.
var collectFlags func(*flag.FlagSet)

// rolloutSubcommands are the words after `edgefleet rollout`.
var rolloutSubcommands = []string{"start", "status", "pause", "resume", "abort", "drive"}

// cmdSpec is what completion knows about one command (or rollout
// subcommand, "rollout start").
type cmdSpec struct {
	name, summary string
	flags         []*flag.Flag
}

// commandSpecs runs every command with flag collection on, so the
// completion comes from the same flag definitions as the commands.
func commandSpecs() []cmdSpec {
	var specs []cmdSpec
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	env := &cliEnv{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
	for _, n := range names {
		runs := [][]string{{n}}
		if n == "rollout" {
			runs = nil
			for _, sub := range rolloutSubcommands {
				runs = append(runs, []string{n, sub})
			}
		}
		for _, args := range runs {
			var flags []*flag.Flag
			collectFlags = func(fs *flag.FlagSet) { fs.VisitAll(func(f *flag.Flag) { flags = append(flags, f) }) }
			commands[n].run(context.Background(), env, args[1:])
			collectFlags = nil
			specs = append(specs, cmdSpec{name: strings.Join(args, " "), summary: commands[n].summary, flags: flags})
		}
	}
	return specs
}

func runCompletion(_ context.Context, env *cliEnv, args []string) int {
	fs := flag.NewFlagSet("completion", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.Usage = func() {
		fmt.Fprintln(env.stderr, "usage: edgefleet completion bash|zsh|fish")
		fmt.Fprintln(env.stderr, "  bash: edgefleet completion bash > /etc/bash_completion.d/edgefleet (or source <(edgefleet completion bash) in ~/.bashrc)")
		fmt.Fprintln(env.stderr, "  zsh:  edgefleet completion zsh > \"${fpath[1]}/_edgefleet\"")
		fmt.Fprintln(env.stderr, "  fish: edgefleet completion fish > ~/.config/fish/completions/edgefleet.fish")
	}
	if collectFlags != nil {
		collectFlags(fs)
		return 2
	}
	if err := parseFlags(fs, args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		return usageError(fs, "name one shell: bash, zsh or fish")
	}
	specs := commandSpecs()
	switch fs.Arg(0) {
	case "bash":
		writeBash(env.stdout, specs)
	case "zsh":
		writeZsh(env.stdout, specs)
	case "fish":
		writeFish(env.stdout, specs)
	default:
		return usageError(fs, "shell %q: want bash, zsh or fish", fs.Arg(0))
	}
	return 0
}

// flagWords is "--key --version -o ..." for a spec.
func flagWords(s cmdSpec) string {
	var w []string
	for _, f := range s.flags {
		w = append(w, dashed(f.Name))
	}
	return strings.Join(w, " ")
}

func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

func topNames(specs []cmdSpec) string {
	seen := map[string]bool{}
	var out []string
	for _, s := range specs {
		top := strings.Fields(s.name)[0]
		if !seen[top] {
			seen[top] = true
			out = append(out, top)
		}
	}
	return strings.Join(append(out, "help"), " ")
}

func writeBash(w io.Writer, specs []cmdSpec) {
	fmt.Fprintln(w, "# bash completion for edgefleet (edgefleet completion bash)")
	fmt.Fprintln(w, "_edgefleet() {")
	fmt.Fprintln(w, `  local cur="${COMP_WORDS[COMP_CWORD]}" cmd="${COMP_WORDS[1]}" flags=""`)
	fmt.Fprintln(w, `  if [ "$COMP_CWORD" -eq 1 ]; then`)
	fmt.Fprintf(w, "    COMPREPLY=($(compgen -W %q -- \"$cur\")); return\n", topNames(specs))
	fmt.Fprintln(w, "  fi")
	fmt.Fprintln(w, `  if [ "$cmd" = rollout ]; then`)
	fmt.Fprintln(w, `    if [ "$COMP_CWORD" -eq 2 ]; then`)
	fmt.Fprintf(w, "      COMPREPLY=($(compgen -W %q -- \"$cur\")); return\n", strings.Join(rolloutSubcommands, " "))
	fmt.Fprintln(w, "    fi")
	fmt.Fprintln(w, `    cmd="rollout ${COMP_WORDS[2]}"`)
	fmt.Fprintln(w, "  fi")
	fmt.Fprintln(w, `  case "$cmd" in`)
	for _, s := range specs {
		fmt.Fprintf(w, "    %q) flags=%q ;;\n", s.name, flagWords(s))
	}
	fmt.Fprintln(w, "  esac")
	fmt.Fprintln(w, `  if [[ "$cur" == -* ]]; then`)
	fmt.Fprintln(w, `    COMPREPLY=($(compgen -W "$flags" -- "$cur"))`)
	fmt.Fprintln(w, "  else")
	fmt.Fprintln(w, `    COMPREPLY=($(compgen -f -- "$cur"))`)
	fmt.Fprintln(w, "  fi")
	fmt.Fprintln(w, "}")
	fmt.Fprintln(w, "complete -o filenames -F _edgefleet edgefleet")
}

// zshQuote quotes s for a single-quoted zsh/fish word.
func zshQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func writeZsh(w io.Writer, specs []cmdSpec) {
	fmt.Fprintln(w, "#compdef edgefleet")
	fmt.Fprintln(w, "# zsh completion for edgefleet (edgefleet completion zsh)")
	fmt.Fprintln(w, "_edgefleet() {")
	fmt.Fprintln(w, "  local -a cmds")
	fmt.Fprintln(w, "  cmds=(")
	seen := map[string]bool{}
	for _, s := range specs {
		top := strings.Fields(s.name)[0]
		if seen[top] {
			continue
		}
		seen[top] = true
		fmt.Fprintf(w, "    %s\n", zshQuote(top+":"+strings.ReplaceAll(s.summary, ":", "\\:")))
	}
	fmt.Fprintln(w, "  )")
	fmt.Fprintln(w, "  if (( CURRENT == 2 )); then _describe command cmds; return; fi")
	fmt.Fprintln(w, `  local cmd="${words[2]}"`)
	fmt.Fprintln(w, `  if [[ $cmd == rollout ]]; then`)
	fmt.Fprintf(w, "    if (( CURRENT == 3 )); then compadd -- %s; return; fi\n", strings.Join(rolloutSubcommands, " "))
	fmt.Fprintln(w, `    cmd="rollout ${words[3]}"`)
	fmt.Fprintln(w, "  fi")
	fmt.Fprintln(w, `  case "$cmd" in`)
	for _, s := range specs {
		fmt.Fprintf(w, "    %s) _arguments", zshQuote(s.name))
		for _, f := range s.flags {
			usage := strings.NewReplacer("[", "(", "]", ")", ":", " ").Replace(firstSentence(f.Usage))
			fmt.Fprintf(w, " %s", zshQuote(dashed(f.Name)+"["+usage+"]"))
		}
		fmt.Fprintln(w, " '*:file:_files' ;;")
	}
	fmt.Fprintln(w, "  esac")
	fmt.Fprintln(w, "}")
	fmt.Fprintln(w, `_edgefleet "$@"`)
}

func writeFish(w io.Writer, specs []cmdSpec) {
	fmt.Fprintln(w, "# fish completion for edgefleet (edgefleet completion fish)")
	fmt.Fprintln(w, "complete -c edgefleet -f")
	seen := map[string]bool{}
	for _, s := range specs {
		top := strings.Fields(s.name)[0]
		if !seen[top] {
			seen[top] = true
			fmt.Fprintf(w, "complete -c edgefleet -n __fish_use_subcommand -a %s -d %s\n", top, zshQuote(firstSentence(s.summary)))
		}
	}
	for _, sub := range rolloutSubcommands {
		fmt.Fprintf(w, "complete -c edgefleet -n '__fish_seen_subcommand_from rollout; and not __fish_seen_subcommand_from %s' -a %s\n", strings.Join(rolloutSubcommands, " "), sub)
	}
	for _, s := range specs {
		cond := "__fish_seen_subcommand_from " + s.name
		if parts := strings.Fields(s.name); len(parts) == 2 {
			cond = "__fish_seen_subcommand_from " + parts[0] + "; and __fish_seen_subcommand_from " + parts[1]
		}
		for _, f := range s.flags {
			opt := "-l " + f.Name
			if len(f.Name) == 1 {
				opt = "-s " + f.Name
			}
			req := " -r -F"
			if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				req = ""
			}
			fmt.Fprintf(w, "complete -c edgefleet -n %s %s%s -d %s\n", zshQuote(cond), opt, req, zshQuote(firstSentence(f.Usage)))
		}
		fmt.Fprintf(w, "complete -c edgefleet -n %s -F\n", zshQuote(cond))
	}
}

// firstSentence keeps help texts short in completion menus.
func firstSentence(s string) string {
	if i := strings.IndexAny(s, ";("); i > 20 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}
