//===- Recipe.cpp - Named training recipes --------------------------------===//
//
// page24: David Page's cifar10-fast ResNet9 (DAWNBench, 94% in 24 epochs):
//   batch 512, lr 0 -> 0.4 at epoch 5 -> 0 at epoch 24 (piecewise linear),
//   SGD Nesterov momentum 0.9, weight decay 5e-4, pad-4 random crop + flip +
//   8x8 cutout, no label smoothing, no EMA, no TTA.
// bot10: the "bag of tricks" 10-epoch schedule of cifar10-fast (as in
//   cifar10-fast-simple), for the resnet9-bot model (CELU, frozen BN scale):
//   lr 0 -> 1.024 at epoch 2 -> 0.1024 at epoch 8, then flat; biases and
//   BatchNorm parameters 64x learning rate and 1/64 weight decay; label
//   smoothing 0.2; EMA of the weights (decay 0.99 per step, applied every 5
//   steps) for evaluation; flip test-time augmentation; crop + flip.
//
// The original code sums the loss over the batch and divides the learning
// rate by the batch size; with fcc's mean loss the equivalent learning rates
// are the per-example ones times 512 (e.g. 2e-3 * 512 = 1.024) and the
// weight decay 5e-4.
//
//===----------------------------------------------------------------------===//
#include "codegen/Recipe.h"

using namespace fcc;

const std::vector<Recipe> &fcc::recipes() {
  static const std::vector<Recipe> all = [] {
    Recipe page;
    page.name = "page24";
    page.summary = "cifar10-fast ResNet9, 24 epochs (lr 0.4 peak at epoch 5, "
                   "Nesterov, wd 5e-4, crop+flip+cutout 8)";
    page.epochs = 24;
    page.lrKnots = "0:0,5:0.4,24:0";
    page.cutout = 8;

    Recipe bot;
    bot.name = "bot10";
    bot.summary = "cifar10-fast bag of tricks, 10 epochs (resnet9-bot; bias "
                  "lr x64 wd /64, label smoothing 0.2, EMA 0.99 every 5 steps, "
                  "flip TTA)";
    bot.epochs = 10;
    bot.lrKnots = "0:0,2:1.024,8:0.1024,10:0.1024";
    bot.labelSmoothing = 0.2f;
    bot.emaDecay = 0.99f;
    bot.emaEvery = 5;
    bot.tta = true;
    bot.biasLrMult = 64.0;
    bot.biasWdMult = 1.0 / 64.0;
    return std::vector<Recipe>{page, bot};
  }();
  return all;
}

std::optional<Recipe> fcc::findRecipe(const std::string &name) {
  for (const Recipe &r : recipes())
    if (r.name == name)
      return r;
  return std::nullopt;
}
