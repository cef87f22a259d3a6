package resolve_test

import "os"

var readFile = os.ReadFile
