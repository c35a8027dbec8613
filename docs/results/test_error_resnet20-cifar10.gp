# Written by mfres plot: `gnuplot test_error_resnet20-cifar10.gp` redraws test_error_resnet20-cifar10.png from test_error_resnet20-cifar10.csv (the files beside it)
d = ARG0; i = strlen(d); while (i > 0 && d[i:i] ne '/') { i = i - 1 }
if (i > 0) { cd d[1:i] }
set datafile separator ','
if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 1200,420 noenhanced } else { set terminal png size 1200,420 noenhanced }
set output 'test_error_resnet20-cifar10.png'
set grid
set title 'test error, resnet20 on cifar10: mean over seeds, band from the lowest to the highest run'
set xlabel 'epoch'
set ylabel 'test error (%)'
set key top right
set xtics 1
set style fill transparent solid 0.2 noborder
plot 'test_error_resnet20-cifar10.csv' using 1:3:4 with filledcurves lc 1 notitle, '' using 1:2 with linespoints lc 1 lw 2 title 'mean-field (tau init unit, tau lr x1)', 'test_error_resnet20-cifar10.csv' using 1:7:8 with filledcurves lc 2 notitle, '' using 1:6 with linespoints lc 2 lw 2 title 'vanilla'
